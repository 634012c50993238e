// OpenTok.js's getStats() shapes, from a WebRTC stats report.

/**
 * @param {RTCStatsReport|Map<string, any>} report
 * @returns {{audio: {bytesSent: number, packetsLost: number, packetsSent: number}, video: {bytesSent: number, packetsLost: number, packetsSent: number, frameRate: number}, timestamp: number}}
 */
export function publisherStats(report) {
  const out = {
    audio: { bytesSent: 0, packetsLost: 0, packetsSent: 0 },
    video: { bytesSent: 0, packetsLost: 0, packetsSent: 0, frameRate: 0 },
    timestamp: Date.now(),
  };
  report.forEach((/** @type {any} */ r) => {
    const kind = r.kind === "audio" ? out.audio : r.kind === "video" ? out.video : null;
    if (!kind) return;
    if (r.type === "outbound-rtp") {
      kind.bytesSent += r.bytesSent || 0;
      kind.packetsSent += r.packetsSent || 0;
      if (r.kind === "video") out.video.frameRate = r.framesPerSecond || 0;
    } else if (r.type === "remote-inbound-rtp") {
      kind.packetsLost += r.packetsLost || 0;
    }
  });
  return out;
}

/**
 * @param {RTCStatsReport|Map<string, any>} report
 */
export function subscriberStats(report) {
  const out = {
    audio: { bytesReceived: 0, packetsLost: 0, packetsReceived: 0 },
    video: { bytesReceived: 0, packetsLost: 0, packetsReceived: 0, frameRate: 0, decodedFrameRate: 0, width: 0, height: 0, codec: "" },
    timestamp: Date.now(),
  };
  /** @type {Map<string, string>} */
  const codecs = new Map();
  report.forEach((/** @type {any} */ r) => {
    if (r.type === "codec") codecs.set(r.id, String(r.mimeType || "").replace(/^video\//i, ""));
  });
  report.forEach((/** @type {any} */ r) => {
    if (r.type !== "inbound-rtp") return;
    const kind = r.kind === "audio" ? out.audio : r.kind === "video" ? out.video : null;
    if (!kind) return;
    kind.bytesReceived += r.bytesReceived || 0;
    kind.packetsLost += r.packetsLost || 0;
    kind.packetsReceived += r.packetsReceived || 0;
    if (r.kind === "video") {
      out.video.frameRate = r.framesPerSecond || 0;
      out.video.decodedFrameRate = r.framesPerSecond || 0;
      out.video.width = r.frameWidth || 0;
      out.video.height = r.frameHeight || 0;
      out.video.codec = codecs.get(r.codecId) || "";
    }
  });
  return out;
}

/**
 * OpenTok.js's getImgData(): the video's current frame as a base64 PNG (no data: prefix).
 * @param {HTMLVideoElement|null} video
 * @returns {string|null}
 */
export function imageData(video) {
  if (!video || !video.videoWidth || !video.videoHeight) return null;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  if (!context) return null;
  context.drawImage(video, 0, 0);
  return canvas.toDataURL("image/png").replace(/^data:image\/png;base64,/, "");
}
