// salon browser SDK: an OpenTok.js-shaped client for salon's signalling protocol
// (docs/protocol.md) and SFU. One ES module, no dependencies, no build step.
//
//   import { initSession, initPublisher } from "/sdk/salon.js";
//   const session = initSession(sessionId);
//   session.on("streamCreated", (e) => session.subscribe(e.stream, "others"));
//   await session.connect(token);
//   await session.publish(initPublisher("me", { name: "Alice" }));
//
// See docs/browser-sdk.md.

/** @typedef {{connectionId: string, creationTime: number, data: string}} Connection */
/**
 * @typedef {object} Stream
 * @property {string} streamId
 * @property {Connection} connection
 * @property {string} name
 * @property {boolean} hasAudio
 * @property {boolean} hasVideo
 * @property {"camera"|"screen"|"custom"|null} videoType
 * @property {{width: number, height: number}|null} videoDimensions
 * @property {number|null} frameRate
 * @property {number} creationTime
 */
/**
 * @typedef {object} PublisherOptions
 * @property {string} [name] the stream's name, as the others see it
 * @property {boolean} [audio] publish a microphone track (default true; false for "screen")
 * @property {boolean} [video] publish a video track (default true)
 * @property {"camera"|"screen"} [videoSource] the camera (getUserMedia) or the screen (getDisplayMedia)
 * @property {string} [resolution] "WIDTHxHEIGHT", e.g. "640x480" (default: the browser's)
 * @property {number} [frameRate] frames per second asked of the device
 * @property {"VP8"|"H264"} [videoCodec] the codec to send the video in when the browser has it
 *   (default: the browser's first choice, VP8 in Chromium); subscribers receive it as sent
 * @property {boolean} [simulcast] send the video in several layers (simulcast, as OpenTok's
 *   scalable video), so each subscriber gets the one its link and window take: a camera in
 *   three (full, half and quarter resolution) from a 960x540 capture up, two (full, half) from
 *   480x270, a screen in two; one below. Default true; false sends one encoding.
 * @property {boolean} [insertDefaultUI] render a <video> into the element (default true)
 * @property {boolean} [publishAudio] start with the audio on (default true): false mutes it
 * @property {boolean} [publishVideo] start with the video on (default true): false turns it off
 * @property {() => Promise<MediaStream>} [media] open the devices this way instead of the SDK's
 *   getUserMedia / getDisplayMedia call (the OpenTok.js layer passes device IDs, tracks and
 *   constraints so); its errors are reported as the SDK's own (`media_access_denied`, …)
 */
/**
 * @typedef {object} SubscriberOptions
 * @property {boolean} [subscribeToAudio] receive the audio (default true)
 * @property {boolean} [subscribeToVideo] receive the video (default true)
 * @property {boolean} [insertDefaultUI] render a <video> into the element (default true)
 * @property {{width: number, height: number}|null} [preferredResolution] the largest video wanted
 *   (default: no preference; change it with `setPreferredResolution`)
 * @property {number|null} [preferredFrameRate] the highest frame rate wanted (default: no
 *   preference; change it with `setPreferredFrameRate`)
 */
/** @typedef {{urls: string[], username?: string, credential?: string}} IceServer */
// The wire messages (docs/protocol.md), generated from the server's schema: protocol.d.ts.
/** @typedef {import("./protocol").ClientMessage} ClientMessage */
/** @typedef {import("./protocol").ClientRequestBody} ClientRequestBody */
/** @typedef {import("./protocol").ServerMessage} ServerMessage */
/** @typedef {import("./protocol").ConnectedMessage} ConnectedMessage */
/** @typedef {import("./protocol").ConnectionInfo} ConnectionInfo */
/** @typedef {import("./protocol").StreamInfo} StreamInfo */
/** @typedef {import("./protocol").StreamPropertyChangedEvent} StreamPropertyChangedEvent */

export const VERSION = "1.0.0";
/** The signalling protocol version this SDK speaks (docs/protocol.md §14). @type {import("./protocol").ProtocolVersion} */
const PROTOCOL_VERSION = 1;

/**
 * Put `codec` (e.g. "H264") first in a video transceiver's offer, keeping the others (and
 * RTX) as fallbacks; nothing changes if the browser cannot send it.
 * @param {RTCRtpTransceiver} transceiver
 * @param {string} codec
 */
function preferCodec(transceiver, codec) {
  const capabilities = globalThis.RTCRtpSender?.getCapabilities?.("video");
  if (!capabilities || typeof transceiver.setCodecPreferences !== "function") return;
  const wanted = `video/${codec}`.toLowerCase();
  const chosen = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!chosen.length) return;
  const rest = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() !== wanted);
  transceiver.setCodecPreferences([...chosen, ...rest]);
}

/**
 * The `sendEncodings` of a published video track: simulcast layers, lowest first (the order
 * the server takes as lowest to highest quality), or undefined for one encoding.
 *
 * As many layers as Chromium sends for the capture size (its simulcast layer limit: three
 * from 960x540, two from 480x270, one below; a layer over the limit is the top one, which it
 * would silently not send): a camera gets up to three (quarter, half and full resolution), a
 * screen up to two (half and full).
 * @param {"camera"|"screen"} videoSource
 * @param {boolean} simulcast
 * @param {{width?: number, height?: number}} settings the track's current settings
 * @returns {RTCRtpEncodingParameters[]|undefined}
 */
function simulcastEncodings(videoSource, simulcast, settings) {
  if (!simulcast) return undefined;
  const pixels = (settings.width || 0) * (settings.height || 0);
  const fits = pixels >= 960 * 540 ? 3 : pixels >= 480 * 270 ? 2 : 1;
  const layers = Math.min(fits, videoSource === "screen" ? 2 : 3);
  if (layers === 3) {
    return [
      { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
      { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 2_000_000 },
    ];
  }
  if (layers === 2) {
    return [
      { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: "f", scaleResolutionDownBy: 1, maxBitrate: videoSource === "screen" ? 2_500_000 : 1_500_000 },
    ];
  }
  return undefined;
}

/** An error of the SDK or a refusal from the server: `code` is stable, `message` is for humans. */
export class SalonError extends Error {
  /**
   * @param {string} code e.g. "invalid_token", "not_found", "media_access_denied", "not_connected"
   * @param {string} message
   * @param {number|null} [closeCode] the WebSocket close code that came with it, if any
   */
  constructor(code, message, closeCode = null) {
    super(message);
    this.name = "SalonError";
    /** @type {string} */
    this.code = code;
    /** @type {number|null} */
    this.closeCode = closeCode;
  }
}

/** Close codes after which reconnecting cannot help (the server's, protocol.md §10). */
const FATAL_CLOSE_CODES = new Set([4000, 4001, 4002, 4003, 4004, 4009, 4012]);

/** Signals queued with `retryAfterReconnect` while reconnecting, at most. */
const MAX_QUEUED_SIGNALS = 100;

/**
 * The close code the SDK itself uses when it gives up on a socket that went silent (no ping
 * for `heartbeat_timeout`): in the private range, and not fatal, so it leads to reconnection.
 */
const SILENT_CLOSE = 4100;

/**
 * @typedef {object} SessionOptions
 * @property {string|string[]} [url] the server's http(s) URL (default: this page's origin), or
 *   several (the nodes of a cluster): `connect` takes the first that answers, in order; when the
 *   connection drops, the session first tries the server it was on (a resume needs it), and an
 *   attempt that cannot reach a server (or that a draining node refuses) moves on to the next
 *   URL at once, round the list, waiting the back-off delay only after a whole round failed
 * @property {number} [reconnectTimeout] seconds to keep trying after the connection drops (default 30)
 * @property {number} [requestTimeout] seconds to wait for the reply to a request (default 20);
 *   then its promise rejects with a SalonError `timeout`
 * @property {IceServer[]} [iceServers] override the STUN/TURN servers the server hands out
 * @property {() => (string|Promise<string>)} [refreshToken] called when a reconnection is refused
 *   because the token has expired: return a fresh token (for the same session) to go on
 *   reconnecting with it; without it (or if it fails) the session ends with `sessionDisconnected`
 *   (`networkDisconnected`, `error.code` `token_expired`)
 * @property {boolean} [resumeOnly] reconnect only by resuming the same connection, as
 *   OpenTok.js does (the OpenTok.js layer sets it): when the server refuses the resume (its
 *   grace period ended) or offers none (`reconnect_grace` 0), the session ends with
 *   `sessionDisconnected` (`networkDisconnected`) instead of connecting afresh as a new
 *   connection (default false)
 */

/**
 * Whether a failed connect attempt should move on to the next server URL: the server could
 * not be reached, did not answer, or is a draining cluster node (`conflict`, closed 1001).
 * @param {SalonError} error
 */
function movesOn(error) {
  return error.code === "network_error" || error.code === "timeout" || (error.code === "conflict" && error.closeCode === 1001);
}

/** A minimal event emitter: `on`, `once`, `off`; handlers get one event object. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * @param {string} name
   * @param {(event: any) => void} handler
   * @returns {this}
   */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    /** @type {Set<Function>} */ (this._handlers.get(name)).add(handler);
    return this;
  }

  /**
   * @param {string} name
   * @param {(event: any) => void} handler
   * @returns {this}
   */
  once(name, handler) {
    const wrapper = (/** @type {any} */ event) => {
      this.off(name, wrapper);
      handler(event);
    };
    return this.on(name, wrapper);
  }

  /**
   * @param {string} name
   * @param {(event: any) => void} [handler] all handlers of `name` when omitted
   * @returns {this}
   */
  off(name, handler) {
    if (!handler) this._handlers.delete(name);
    else this._handlers.get(name)?.delete(handler);
    return this;
  }

  /**
   * @param {string} name
   * @param {object} [event]
   */
  emit(name, event = {}) {
    for (const handler of [...(this._handlers.get(name) || [])]) {
      try {
        handler({ type: name, target: this, ...event });
      } catch (err) {
        console.error(`salon: a ${name} handler failed`, err);
      }
    }
  }
}

/** @param {ConnectionInfo} c @returns {Connection} */
function toConnection(c) {
  return { connectionId: c.connection_id, creationTime: c.created_at, data: c.data };
}

/**
 * @param {StreamInfo} s
 * @param {Map<string, Connection>} connections
 * @returns {Stream}
 */
function toStream(s, connections) {
  return {
    streamId: s.stream_id,
    connection: connections.get(s.connection_id) || { connectionId: s.connection_id, creationTime: 0, data: "" },
    name: s.name,
    hasAudio: s.has_audio,
    hasVideo: s.has_video,
    videoType: s.video_type,
    videoDimensions: s.width && s.height ? { width: s.width, height: s.height } : null,
    frameRate: s.frame_rate,
    creationTime: s.created_at,
  };
}

/** @type {Record<string, string>} */
const PROPERTY_NAMES = {
  has_audio: "hasAudio",
  has_video: "hasVideo",
  name: "name",
  video_type: "videoType",
  dimensions: "videoDimensions",
};

/**
 * @param {HTMLElement|string|null|undefined} target
 * @returns {HTMLElement|null}
 */
function resolveElement(target) {
  if (!target) return null;
  if (typeof target === "string") {
    const el = document.getElementById(target);
    if (!el) throw new SalonError("invalid_parameter", `no element with id "${target}"`);
    return el;
  }
  return target;
}

/**
 * @param {HTMLElement|null} container
 * @param {string} className
 * @param {boolean} muted
 * @returns {{wrapper: HTMLElement|null, video: HTMLVideoElement}}
 */
function renderVideo(container, className, muted) {
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = muted;
  if (!container) return { wrapper: null, video };
  const wrapper = document.createElement("div");
  wrapper.className = className;
  wrapper.appendChild(video);
  container.appendChild(wrapper);
  return { wrapper, video };
}

/** The largest width or height, and frame rate, a subscriber may prefer (docs/protocol.md §13.7). */
const MAX_PREFERRED_DIMENSION = 16384;
const MAX_PREFERRED_FRAME_RATE = 240;

/**
 * A preferred resolution as the server takes it, or null; a TypeError for anything else.
 * @param {{width: number, height: number}|null} resolution
 * @returns {{width: number, height: number}|null}
 */
function checkResolution(resolution) {
  if (resolution === null || resolution === undefined) return null;
  const ok = (/** @type {unknown} */ v) => Number.isInteger(v) && /** @type {number} */ (v) >= 1 && /** @type {number} */ (v) <= MAX_PREFERRED_DIMENSION;
  if (typeof resolution !== "object" || !ok(resolution.width) || !ok(resolution.height)) {
    throw new TypeError(`a preferred resolution is {width, height}, integers from 1 to ${MAX_PREFERRED_DIMENSION}`);
  }
  return { width: resolution.width, height: resolution.height };
}

/**
 * A preferred frame rate as the server takes it, or null; a TypeError for anything else.
 * @param {number|null} frameRate
 * @returns {number|null}
 */
function checkFrameRate(frameRate) {
  if (frameRate === null || frameRate === undefined) return null;
  if (typeof frameRate !== "number" || !(frameRate > 0 && frameRate <= MAX_PREFERRED_FRAME_RATE)) {
    throw new TypeError(`a preferred frame rate is a number greater than 0 and at most ${MAX_PREFERRED_FRAME_RATE}`);
  }
  return frameRate;
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A local camera/microphone or screen, rendered into an element, published with `session.publish`.
 * Events: `accessAllowed`, `accessDenied` ({error}), `mediaStopped`, `muteForced`,
 * `streamCreated` ({stream}), `streamDestroyed` ({stream, reason}).
 */
export class Publisher extends Emitter {
  /**
   * @param {HTMLElement|string|null} element
   * @param {PublisherOptions} options
   */
  constructor(element, options) {
    super();
    /** @type {PublisherOptions} */
    this.options = { ...options };
    this.videoSource = options.videoSource || "camera";
    this.name = options.name || "";
    this.element = null;
    /** @type {HTMLVideoElement|null} */
    this.videoElement = null;
    /** @type {MediaStream|null} */
    this.mediaStream = null;
    /** @type {Stream|null} */
    this.stream = null;
    /** @type {Session|null} */
    this.session = null;
    /** @type {RTCPeerConnection|null} */
    this.pc = null;
    this._audioOn = options.publishAudio !== false;
    this._videoOn = options.publishVideo !== false;
    const container = resolveElement(element);
    if (options.insertDefaultUI !== false) {
      const { wrapper, video } = renderVideo(container, "salon-publisher", true);
      this.element = wrapper;
      this.videoElement = video;
    }
    /** Settles when the devices are open: rejects with a SalonError (`media_access_denied`, …). */
    this.ready = this._acquire();
    this.ready.catch(() => {}); // handled by whoever awaits it, or by the accessDenied event
  }

  /** @returns {Promise<MediaStream>} */
  async _acquire() {
    const opts = this.options;
    /** @type {MediaTrackConstraints} */
    const video = {};
    if (opts.resolution) {
      const [w, h] = opts.resolution.split("x").map(Number);
      if (w && h) Object.assign(video, { width: { ideal: w }, height: { ideal: h } });
    }
    if (opts.frameRate) video.frameRate = { ideal: opts.frameRate };
    const wantVideo = opts.video !== false;
    try {
      /** @type {MediaStream} */
      let media;
      if (opts.media) {
        media = await opts.media();
      } else if (this.videoSource === "screen") {
        if (!navigator.mediaDevices?.getDisplayMedia) {
          throw new SalonError("screen_sharing_not_supported", "this browser cannot share the screen");
        }
        media = await navigator.mediaDevices.getDisplayMedia({ video: wantVideo ? video : true, audio: false });
      } else {
        const wantAudio = opts.audio !== false;
        if (!wantAudio && !wantVideo) throw new SalonError("invalid_parameter", "a publisher needs audio or video");
        if (!navigator.mediaDevices?.getUserMedia) {
          throw new SalonError("media_not_supported", "camera access needs a secure page (https or localhost)");
        }
        media = await navigator.mediaDevices.getUserMedia({
          audio: wantAudio,
          video: wantVideo ? (Object.keys(video).length ? video : true) : false,
        });
      }
      this.mediaStream = media;
      for (const track of media.getAudioTracks()) track.enabled = this._audioOn;
      for (const track of media.getVideoTracks()) track.enabled = this._videoOn;
      if (this.videoElement) this.videoElement.srcObject = media;
      for (const track of media.getTracks()) {
        track.addEventListener("ended", () => this.emit("mediaStopped", { track }));
      }
      this.emit("accessAllowed");
      return media;
    } catch (err) {
      const e = /** @type {any} */ (err);
      let error;
      if (e instanceof SalonError) error = e;
      else if (e && (e.name === "NotAllowedError" || e.name === "SecurityError")) {
        error = new SalonError("media_access_denied", "access to the camera or microphone was refused");
      } else if (e && (e.name === "NotFoundError" || e.name === "OverconstrainedError")) {
        error = new SalonError("media_device_not_found", "no camera or microphone was found");
      } else if (e && e.name === "NotReadableError") {
        error = new SalonError("media_device_busy", "the camera or microphone is in use by another application");
      } else error = new SalonError("media_error", String((e && e.message) || e));
      this.emit("accessDenied", { error });
      throw error;
    }
  }

  /** The audio track, if any. @returns {MediaStreamTrack|null} */
  get audioTrack() {
    return this.mediaStream?.getAudioTracks()[0] || null;
  }

  /** The video track, if any. @returns {MediaStreamTrack|null} */
  get videoTrack() {
    return this.mediaStream?.getVideoTracks()[0] || null;
  }

  /** Whether the audio is on (not muted). */
  get publishingAudio() {
    return this._audioOn && !!this.audioTrack;
  }

  /** Whether the video is on. */
  get publishingVideo() {
    return this._videoOn && !!this.videoTrack;
  }

  /**
   * Mute or unmute the audio: the track stays (silence is sent) and the others see `hasAudio` change.
   * @param {boolean} on
   * @returns {Promise<void>}
   */
  async publishAudio(on) {
    this._audioOn = on;
    const track = this.audioTrack;
    if (track) track.enabled = on;
    await this._update({ has_audio: on && !!track });
  }

  /**
   * Turn the video on or off (black frames are sent while off); the others see `hasVideo` change.
   * @param {boolean} on
   * @returns {Promise<void>}
   */
  async publishVideo(on) {
    this._videoOn = on;
    const track = this.videoTrack;
    if (track) track.enabled = on;
    await this._update({ has_video: on && !!track });
  }

  /**
   * Send another track in place of the one of its kind (another camera or microphone), with no
   * renegotiation: the old track stops; the new one takes the mute state.
   * @param {MediaStreamTrack} track
   */
  async replaceTrack(track) {
    await this.ready;
    const media = /** @type {MediaStream} */ (this.mediaStream);
    const old = track.kind === "audio" ? this.audioTrack : this.videoTrack;
    if (!old) throw new SalonError("invalid_parameter", `this publisher has no ${track.kind} track to replace`);
    const sender = this.pc?.getSenders().find((s) => s.track === old);
    if (sender) await sender.replaceTrack(track);
    track.enabled = track.kind === "audio" ? this._audioOn : this._videoOn;
    media.removeTrack(old);
    media.addTrack(track);
    old.stop();
    track.addEventListener("ended", () => this.emit("mediaStopped", { track }));
    if (this.videoElement && track.kind === "video") this.videoElement.srcObject = media;
  }

  /** @param {{has_audio?: boolean, has_video?: boolean}} fields */
  async _update(fields) {
    if (this.session && this.stream && this.session.isConnected()) {
      const stream = this.stream;
      await this.session._request({ type: "update_stream", stream_id: stream.streamId, ...fields });
      // The others get stream_property_changed; the owner's own Stream follows the change here.
      if (fields.has_audio !== undefined) stream.hasAudio = fields.has_audio;
      if (fields.has_video !== undefined) stream.hasVideo = fields.has_video;
    }
  }

  /** Stop the devices and remove the rendered element (unpublishes first if publishing). */
  async destroy() {
    if (this.session && this.stream) {
      try {
        await this.session.unpublish(this);
      } catch {
        // already gone
      }
    }
    this._closePeer();
    for (const track of this.mediaStream?.getTracks() || []) track.stop();
    this.element?.remove();
  }

  _closePeer() {
    this.pc?.close();
    this.pc = null;
  }
}

/**
 * The media of one remote stream, rendered into an element. Events: `videoElementCreated`,
 * `audioLevelUpdated` ({audioLevel}), `destroyed` ({reason}), `videoDisabled` / `videoEnabled`
 * ({reason}: `"quality"` when the server stopped the video because this link cannot carry it,
 * then brought it back).
 */
export class Subscriber extends Emitter {
  /**
   * @param {Stream} stream
   * @param {HTMLElement|null} container
   * @param {SubscriberOptions} options
   */
  constructor(stream, container, options) {
    super();
    this.stream = stream;
    this.options = { ...options };
    /** @type {Session|null} */
    this.session = null;
    /** @type {string|null} */
    this.subscriptionId = null;
    /** @type {RTCRtpTransceiver[]} this subscription's m-lines on the session's receiving peer connection */
    this.transceivers = [];
    /** The remote tracks, as they arrive. */
    this.mediaStream = new MediaStream();
    /** @type {Set<string>} the kinds this subscription negotiated */
    this.kinds = new Set();
    this.audioOn = options.subscribeToAudio !== false;
    this.videoOn = options.subscribeToVideo !== false;
    /** @type {{width: number, height: number}|null} */
    this.preferredResolution = checkResolution(options.preferredResolution ?? null);
    /** @type {number|null} */
    this.preferredFrameRate = checkFrameRate(options.preferredFrameRate ?? null);
    /** @type {string|null} why the server stopped this video on its own ("quality"), null while it sends it */
    this.videoDisabledReason = null;
    this.element = null;
    /** @type {HTMLVideoElement|null} */
    this.videoElement = null;
    if (options.insertDefaultUI !== false) {
      const { wrapper, video } = renderVideo(container, "salon-subscriber", false);
      this.element = wrapper;
      this.videoElement = video;
      video.srcObject = this.mediaStream;
    }
  }

  /**
   * Receive the audio, or stop receiving it (no renegotiation).
   * @param {boolean} on
   */
  async subscribeToAudio(on) {
    this.audioOn = on;
    if (this.session && this.subscriptionId) {
      await this.session._request({ type: "set_subscription", subscription_id: this.subscriptionId, audio: on });
    }
  }

  /**
   * Receive the video, or stop receiving it.
   * @param {boolean} on
   */
  async subscribeToVideo(on) {
    this.videoOn = on;
    if (this.session && this.subscriptionId) {
      await this.session._request({ type: "set_subscription", subscription_id: this.subscriptionId, video: on });
    }
  }

  /**
   * Ask for video no larger than this (each side an integer from 1 to 16384), or (null) for
   * no limit: the server forwards the stream's layer that fits. Throws a TypeError (sends
   * nothing) for a value out of range; rejects with the server's SalonError if it refuses.
   * @param {{width: number, height: number}|null} resolution
   */
  async setPreferredResolution(resolution) {
    this.preferredResolution = checkResolution(resolution);
    await this._sendPreferences();
  }

  /**
   * Ask for video at no more than this many frames per second (greater than 0, at most 240),
   * or (null) at any rate. Throws a TypeError for a value out of range.
   * @param {number|null} frameRate
   */
  async setPreferredFrameRate(frameRate) {
    this.preferredFrameRate = checkFrameRate(frameRate);
    await this._sendPreferences();
  }

  /** The preferences as `subscribe` and `set_subscription_preferences` carry them. */
  _wirePreferences() {
    const r = this.preferredResolution;
    return {
      preferred_resolution: r ? { width: r.width, height: r.height } : null,
      preferred_frame_rate: this.preferredFrameRate,
    };
  }

  async _sendPreferences() {
    if (this.session && this.subscriptionId) {
      await this.session._request({
        type: "set_subscription_preferences",
        subscription_id: this.subscriptionId,
        ...this._wirePreferences(),
      });
    }
  }

  /**
   * The peer connection this subscriber receives on: the session's one receiving peer
   * connection, shared by all its subscribers (null once unsubscribed).
   * @returns {RTCPeerConnection|null}
   */
  get pc() {
    return this.transceivers.length && this.session ? this.session._subscribePc : null;
  }

  /**
   * This subscription's own statistics (its receivers' `inbound-rtp` and the shared transport).
   * @returns {Promise<Map<string, any>>}
   */
  async getStats() {
    /** @type {Map<string, any>} */
    const merged = new Map();
    for (const transceiver of this.transceivers) {
      (await transceiver.receiver.getStats()).forEach((report, id) => merged.set(id, report));
    }
    return merged;
  }

  /** Leave this subscription's m-lines: inactive from the next offer on, tracks ended. */
  _closePeer() {
    for (const transceiver of this.transceivers) {
      if (transceiver.currentDirection !== "stopped") transceiver.direction = "inactive";
      if (transceiver.mid) this.session?._subscribeOwners.delete(transceiver.mid);
    }
    this.transceivers = [];
    for (const track of this.mediaStream.getTracks()) {
      this.mediaStream.removeTrack(track);
      track.stop();
    }
  }

  /** @param {string} reason */
  _destroy(reason) {
    this._closePeer();
    this.element?.remove();
    this.emit("destroyed", { reason });
  }
}

/**
 * One connection to a salon session. Events (OpenTok.js names): connectionCreated,
 * connectionDestroyed, streamCreated, streamDestroyed, streamPropertyChanged, signal,
 * signal:TYPE, sessionDisconnected, sessionReconnecting, sessionReconnected ({resumed}),
 * audioLevelUpdated, activeSpeaker, muteForced, muteAllChanged ({active, excludedStreamIds}),
 * archiveStarted, archiveStopped.
 *
 * Reconnection, as OpenTok does it (docs/protocol.md §2.7): when the socket drops, the SDK
 * emits `sessionReconnecting` and resumes its connection with the secret of its last
 * `connected`: the same connection ID, the same stream IDs (each publisher's media is set up
 * again under its stream ID), and the others see nothing; then `sessionReconnected` with
 * `resumed: true`, and the signals sent with `retryAfterReconnect` meanwhile go out. If the
 * server refuses the resume (its grace period ended), it connects afresh: a new connection,
 * publishers published again under new stream IDs (`resumed: false`); with the `resumeOnly`
 * option the session ends instead (`sessionDisconnected`, `networkDisconnected`).
 */
export class Session extends Emitter {
  /**
   * @param {string} sessionId
   * @param {SessionOptions} [options]
   */
  constructor(sessionId, options = {}) {
    super();
    this.sessionId = sessionId;
    const urls = Array.isArray(options.url) ? options.url : [options.url || globalThis.location?.origin || ""];
    if (urls.length === 0) throw new SalonError("invalid_parameter", "url: at least one server URL");
    /** @type {string[]} the server URLs, in the order they are tried */
    this.urls = urls.map((u) => String(u).replace(/\/+$/, ""));
    /** @type {string} the server in use (or tried next): one of `urls`, or the node of a cluster that placement sent the session to */
    this.url = this.urls[0];
    /** @type {string} the one of `urls` in use, or that sent the session to `url` (a `redirect`) */
    this._givenUrl = this.url;
    this.reconnectTimeout = options.reconnectTimeout ?? 30;
    this.requestTimeout = options.requestTimeout ?? 20;
    this._refreshToken = options.refreshToken || null;
    this._resumeOnly = options.resumeOnly === true;
    this._ownIceServers = options.iceServers || null;
    /** @type {IceServer[]} */
    this.iceServers = [];
    /** @type {Connection|null} */
    this.connection = null;
    /** @type {string|null} */
    this.role = null;
    /** @type {Map<string, Connection>} */
    this.connections = new Map();
    /** @type {Map<string, Stream>} */
    this.streams = new Map();
    /** @type {Set<Publisher>} */
    this.publishers = new Set();
    /** @type {Set<Subscriber>} */
    this.subscribers = new Set();
    /** @type {RTCPeerConnection|null} the one peer connection every subscriber receives on */
    this._subscribePc = null;
    /** @type {Map<string, Subscriber>} who added each m-line (by mid) of the receiving peer connection */
    this._subscribeOwners = new Map();
    /** @type {Promise<unknown>} negotiations of the receiving peer connection, one at a time */
    this._subscribeQueue = Promise.resolve();
    /** @type {((target: object) => void)|null} */
    this._subscribeTrickle = null;
    /** @type {"disconnected"|"connecting"|"connected"|"reconnecting"} */
    this.state = "disconnected";
    /** @type {WebSocket|null} */
    this._ws = null;
    this._token = "";
    this._nextId = 1;
    /** @type {Map<number|string, {resolve: (m: any) => void, reject: (e: SalonError) => void}>} */
    this._pending = new Map();
    this._heartbeatTimeout = 8;
    this._lastMessage = 0;
    /** @type {ReturnType<typeof setInterval>|null} */
    this._watchdog = null;
    /** @type {string|null} the secret of the last `connected`, to resume this connection */
    this._resumeSecret = null;
    /** @type {WebSocket|null} a socket given up as silent, closed once reconnected */
    this._staleWs = null;
    /** @type {{message: ClientRequestBody, resolve: () => void, reject: (e: SalonError) => void}[]} */
    this._queuedSignals = [];
  }

  /** @returns {boolean} */
  isConnected() {
    return this.state === "connected";
  }

  /**
   * Connect with a client token minted by your application server.
   * @param {string} token
   * @returns {Promise<void>} rejects with a SalonError (e.g. `invalid_token`, `not_found`, `network_error`)
   */
  async connect(token) {
    if (this.state !== "disconnected") throw new SalonError("already_connected", "the session is already connected");
    this._token = token;
    this.state = "connecting";
    try {
      let connected;
      for (let tried = 1; ; tried++) {
        try {
          connected = await this._open();
          break;
        } catch (err) {
          if (tried >= this.urls.length || !movesOn(/** @type {SalonError} */ (err))) throw err;
          this._nextUrl();
        }
      }
      this._adopt(connected, false);
      this.state = "connected";
      this._announceInitial();
    } catch (err) {
      this.state = "disconnected";
      this._closeSocket();
      throw err;
    }
  }

  /** Leave the session: unpublish, unsubscribe, close the socket. */
  disconnect() {
    if (this.state === "disconnected") return;
    this._finish("clientDisconnected");
  }

  /** Move to the next of `urls` (round the list); from a node placement sent the session to, back to the URL that sent it. */
  _nextUrl() {
    if (this.url !== this._givenUrl) {
      this.url = this._givenUrl;
      return;
    }
    this.url = this.urls[(this.urls.indexOf(this.url) + 1) % this.urls.length];
    this._givenUrl = this.url;
  }

  /**
   * @param {string} [url]
   * @returns {string}
   */
  _wsUrl(url = this.url) {
    return url.replace(/^http/, "ws") + "/signalling";
  }

  /**
   * Connect (or resume) through `url`. A fresh connect may be sent to another node of a
   * cluster (`redirect`, placement by load): connect there; if that node cannot be reached,
   * connect here again, asking not to be sent elsewhere.
   * @param {{connection_id: string, secret: string}|null} [resume]
   * @returns {Promise<ConnectedMessage>}
   */
  async _open(resume = null) {
    if (resume) return this._openAt(this.url, resume, false);
    try {
      return await this._openAt(this.url, null, true);
    } catch (err) {
      const moved = /** @type {SalonError & {url?: string}} */ (err);
      if (moved.code !== "redirect" || !moved.url) throw err;
      try {
        const connected = await this._openAt(moved.url, null, false);
        this.url = moved.url;
        return connected;
      } catch (unreachable) {
        if (!movesOn(/** @type {SalonError} */ (unreachable))) throw unreachable;
        return this._openAt(this.url, null, false);
      }
    }
  }

  /**
   * Open a socket to `url` and send `connect` (resuming the connection `resume` names, if
   * given); resolves with the `connected` message, or rejects (a `redirect` as a SalonError
   * with code "redirect" and the `url` to use).
   * @param {string} url
   * @param {{connection_id: string, secret: string}|null} resume
   * @param {boolean} acceptRedirect
   * @returns {Promise<ConnectedMessage>}
   */
  _openAt(url, resume, acceptRedirect) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this._wsUrl(url));
      } catch (err) {
        reject(new SalonError("network_error", `cannot open ${this._wsUrl(url)}: ${err}`));
        return;
      }
      this._ws = ws;
      let settled = false;
      /** @type {SalonError|null} */
      let refusal = null;
      const timer = setTimeout(() => fail(new SalonError("timeout", "the server did not answer in time")), 15000);
      const fail = (/** @type {SalonError} */ error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.close();
        reject(error);
      };
      ws.onopen = () => {
        this._send({
          type: "connect",
          request_id: 0,
          session_id: this.sessionId,
          token: this._token,
          protocol_version: PROTOCOL_VERSION,
          client: `salon.js/${VERSION}`,
          ...(resume ? { resume } : {}),
          ...(acceptRedirect ? { accept_redirect: true } : {}),
        });
      };
      ws.onmessage = (ev) => {
        const msg = /** @type {ServerMessage} */ (JSON.parse(String(ev.data)));
        if (!settled) {
          if (msg.type === "connected") {
            settled = true;
            clearTimeout(timer);
            ws.onmessage = (e) => this._onMessage(ws, JSON.parse(String(e.data)));
            ws.onclose = (e) => this._onClose(ws, e);
            resolve(msg);
          } else if (msg.type === "error") {
            refusal = new SalonError(msg.code, msg.message);
          } else if (msg.type === "redirect") {
            refusal = Object.assign(new SalonError("redirect", `sent to node ${msg.node}`), { url: msg.url });
          }
        }
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        if (refusal) {
          refusal.closeCode = ev.code;
          if (ev.code === 4002) refusal.code = "token_expired";
          fail(refusal);
        } else fail(new SalonError("network_error", `could not reach the server (${ev.code})`, ev.code));
      };
    });
  }

  /**
   * @param {ConnectedMessage} connected
   * @param {boolean} quiet do not emit events (a reconnect diffs them itself)
   */
  _adopt(connected, quiet) {
    this.connection = toConnection(connected.connection);
    this.role = connected.role;
    this._resumeSecret = connected.resume_secret ?? null;
    this.iceServers = this._ownIceServers || connected.ice_servers.map((s) => {
      /** @type {IceServer} */
      const server = { urls: s.urls };
      if (s.username != null) server.username = s.username;
      if (s.credential != null) server.credential = s.credential;
      return server;
    });
    this._heartbeatTimeout = connected.heartbeat_timeout;
    this._lastMessage = Date.now();
    if (this._watchdog) clearInterval(this._watchdog);
    this._watchdog = setInterval(() => {
      // The server pings every heartbeat_interval: silence means the network is gone. (Not
      // while reconnecting: the socket then is a new one, still opening, with its own timeout.)
      const silent = Date.now() - this._lastMessage > this._heartbeatTimeout * 1000;
      if (this._ws && this.state === "connected" && silent) this._lost(this._ws);
    }, 1000);
    if (!quiet) {
      this.connections = new Map(connected.connections.map((c) => [c.connection_id, toConnection(c)]));
      this.connections.set(this.connection.connectionId, this.connection);
      this.streams = new Map(connected.streams.map((s) => [s.stream_id, toStream(s, this.connections)]));
    }
  }

  _announceInitial() {
    for (const c of this.connections.values()) {
      if (c !== this.connection) this.emit("connectionCreated", { connection: c });
    }
    for (const s of this.streams.values()) this.emit("streamCreated", { stream: s });
  }

  /** @param {ClientMessage} message */
  _send(message) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  /**
   * Send a request and wait for its reply, for at most `requestTimeout` seconds.
   * @param {ClientRequestBody} message
   * @returns {Promise<any>} the reply; rejects with a SalonError carrying the server's error
   *   code, `timeout` when no reply came in time, `disconnected` when the socket dropped
   */
  _request(message) {
    if (this.state !== "connected") {
      return Promise.reject(new SalonError("not_connected", "the session is not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (!this._pending.delete(id)) return;
        reject(new SalonError("timeout", `the server did not answer ${message.type} within ${this.requestTimeout} s`));
      }, this.requestTimeout * 1000);
      this._pending.set(id, {
        resolve: (/** @type {any} */ m) => { clearTimeout(timer); resolve(m); },
        reject: (/** @type {SalonError} */ e) => { clearTimeout(timer); reject(e); },
      });
      this._send({ ...message, request_id: id });
    });
  }

  /**
   * @param {WebSocket} ws
   * @param {ServerMessage} msg
   */
  _onMessage(ws, msg) {
    if (ws !== this._ws) return;
    this._lastMessage = Date.now();
    if ("request_id" in msg && msg.request_id != null) {
      const pending = this._pending.get(msg.request_id);
      if (pending) {
        this._pending.delete(msg.request_id);
        if (msg.type === "error") pending.reject(new SalonError(msg.code, msg.message));
        else pending.resolve(msg);
      }
      return;
    }
    // A message type this SDK does not know (from a newer server) is ignored: see
    // "Versioning" in docs/protocol.md.
    switch (msg.type) {
      case "ping":
        this._send({ type: "pong", timestamp: msg.timestamp });
        break;
      case "connection_created": {
        const c = toConnection(msg.connection);
        this.connections.set(c.connectionId, c);
        this.emit("connectionCreated", { connection: c });
        break;
      }
      case "connection_destroyed": {
        const c = this.connections.get(msg.connection_id);
        this.connections.delete(msg.connection_id);
        if (c) this.emit("connectionDestroyed", { connection: c, reason: msg.reason });
        break;
      }
      case "stream_created": {
        const s = toStream(msg.stream, this.connections);
        this.streams.set(s.streamId, s);
        this.emit("streamCreated", { stream: s });
        break;
      }
      case "stream_destroyed":
        this._streamGone(msg.stream_id, msg.reason);
        break;
      case "media_reset":
        this._mediaReset(msg.stream_ids);
        break;
      case "stream_property_changed":
        this._propertyChanged(msg);
        break;
      case "signal": {
        const event = {
          signalType: msg.signal_type,
          data: msg.data,
          from: msg.from_connection_id ? this.connections.get(msg.from_connection_id) || { connectionId: msg.from_connection_id, creationTime: 0, data: "" } : null,
        };
        this.emit("signal", event);
        if (msg.signal_type) this.emit(`signal:${msg.signal_type}`, event);
        break;
      }
      case "mute_all_changed":
        // Mute-all switched on or off by a moderator; every connection gets it (OpenTok.js's
        // Session muteForced with `active`). Muted streams' owners also get mute_forced.
        this.emit("muteAllChanged", { active: msg.active, excludedStreamIds: msg.excluded_stream_ids ?? [] });
        break;
      case "mute_forced":
        for (const p of this.publishers) {
          if (p.stream?.streamId === msg.stream_id) {
            p._audioOn = false;
            if (p.audioTrack) p.audioTrack.enabled = false;
            // The server turned the stream's has_audio off; the owner gets no stream_property_changed.
            if (p.stream) p.stream.hasAudio = false;
            p.emit("muteForced", { stream: p.stream });
            this.emit("muteForced", { stream: p.stream });
          }
        }
        break;
      case "session_disconnected":
        this._finish(msg.reason);
        break;
      case "audio_levels":
        for (const { stream_id: streamId, level } of msg.levels) {
          this.emit("audioLevelUpdated", { streamId, stream: this.streams.get(streamId) || null, audioLevel: level });
          for (const sub of this.subscribers) {
            if (sub.stream.streamId === streamId) sub.emit("audioLevelUpdated", { audioLevel: level });
          }
        }
        break;
      case "active_speaker":
        this.emit("activeSpeaker", { streamId: msg.stream_id, stream: msg.stream_id ? this.streams.get(msg.stream_id) || null : null });
        break;
      case "archive_started":
        this.emit("archiveStarted", { id: msg.archive_id, name: msg.name ?? "" });
        break;
      case "archive_stopped":
        this.emit("archiveStopped", { id: msg.archive_id, name: msg.name ?? "" });
        break;
      case "video_disabled":
      case "video_enabled":
        // The server stopped (or resumed) a subscription's video on its own: reason "quality"
        // when this link cannot carry even the stream's lowest layer.
        for (const sub of this.subscribers) {
          if (sub.subscriptionId === msg.subscription_id) {
            const disabled = msg.type === "video_disabled";
            sub.videoDisabledReason = disabled ? msg.reason : null;
            sub.emit(disabled ? "videoDisabled" : "videoEnabled", { reason: msg.reason });
          }
        }
        break;
      default:
        break;
    }
  }

  /**
   * @param {string} streamId
   * @param {string} reason
   */
  _streamGone(streamId, reason) {
    for (const p of this.publishers) {
      if (p.stream?.streamId === streamId) {
        const stream = p.stream;
        p.stream = null;
        p._closePeer();
        this.publishers.delete(p);
        p.emit("streamDestroyed", { stream, reason });
      }
    }
    const stream = this.streams.get(streamId);
    this.streams.delete(streamId);
    for (const sub of [...this.subscribers]) {
      if (sub.stream.streamId === streamId) {
        this.subscribers.delete(sub);
        sub._destroy(reason);
      }
    }
    if (stream) this.emit("streamDestroyed", { stream, reason });
  }

  /**
   * The server's media worker failed: every transport of the session's media is gone. The
   * `stream_destroyed` (`mediaStopped`) that follow destroy the subscribers as usual; the
   * receiving peer connection is closed now (the next subscription makes a new one), and the
   * publishers of `streamIds` publish again at once (new streams: their `streamCreated` fires,
   * as after a reconnection) instead of being destroyed.
   * @param {string[]} streamIds this connection's streams that end
   */
  _mediaReset(streamIds) {
    console.warn(`salon: the server's media worker failed; publishing ${streamIds.length} streams again`);
    this._replaceReceivingPeer();
    for (const p of [...this.publishers]) {
      if (p.stream && streamIds.includes(p.stream.streamId)) {
        p.stream = null; // its stream_destroyed then finds no publisher to destroy
        this._republish(p);
      }
    }
  }

  /**
   * Close the receiving peer connection (its transport on the server is gone); the
   * subscribers on it leave it first (their m-lines go, their tracks end).
   * @returns {Subscriber[]} the subscribers that were receiving on it
   */
  _replaceReceivingPeer() {
    const pc = this._subscribePc;
    const on = [...this.subscribers].filter((s) => s.transceivers.length && pc);
    for (const s of on) s._closePeer();
    this._closeSubscribePc();
    return on;
  }

  /** @param {Publisher} publisher */
  async _republish(publisher) {
    publisher._closePeer();
    try {
      await this._negotiatePublisher(publisher);
    } catch (err) {
      // Reconnecting publishes it again; unpublished meanwhile: nothing to do.
      if (this.state !== "connected" || !this.publishers.has(publisher)) return;
      this.publishers.delete(publisher);
      publisher._closePeer();
      publisher.session = null;
      publisher.emit("streamDestroyed", { stream: null, reason: "mediaStopped", error: err });
    }
  }

  /** @param {StreamPropertyChangedEvent} msg */
  _propertyChanged(msg) {
    const stream = this.streams.get(msg.stream_id);
    if (!stream) return;
    const property = PROPERTY_NAMES[msg.property] || msg.property;
    /** @type {unknown} */
    let oldValue = msg.old_value;
    /** @type {unknown} */
    let newValue = msg.new_value;
    if (property === "videoDimensions") {
      const dimensions = (/** @type {unknown} */ v) => (Array.isArray(v) ? { width: v[0], height: v[1] } : null);
      oldValue = dimensions(oldValue);
      newValue = dimensions(newValue);
    }
    /** @type {any} */ (stream)[property] = newValue;
    this.emit("streamPropertyChanged", { stream, changedProperty: property, oldValue, newValue });
    // A kind that was off when we subscribed was not negotiated: subscribe again to get it.
    const kind = property === "hasAudio" ? "audio" : property === "hasVideo" ? "video" : null;
    if (kind && newValue === true) {
      for (const sub of this.subscribers) {
        if (sub.stream === stream && !sub.kinds.has(kind)) {
          this._negotiateSubscriber(sub).catch((err) => console.warn("salon: re-subscribe failed", err));
        }
      }
    }
  }

  /**
   * Give up on a socket that went silent: the network may hold it half-open for minutes, so
   * do not wait for its close handshake (or its close event) before reconnecting.
   * @param {WebSocket} ws
   */
  _lost(ws) {
    ws.onmessage = ws.onclose = null;
    if (this._resumeSecret) {
      // Not closed yet: a close frame that reaches the server would end the connection for
      // good. The resume takes the connection over (the server closes this socket, 4012).
      this._staleWs = ws;
    } else {
      try {
        ws.close(SILENT_CLOSE, "no heartbeat");
      } catch {
        // already closing
      }
    }
    this._onClose(ws, { code: SILENT_CLOSE });
  }

  _closeStale() {
    const ws = this._staleWs;
    this._staleWs = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(SILENT_CLOSE, "no heartbeat");
  }

  /** Stop the media before connecting afresh (the server closes the old connection's transports). */
  _stopMedia() {
    for (const p of this.publishers) p._closePeer();
    for (const s of this.subscribers) s._closePeer();
    this._closeSubscribePc();
  }

  /**
   * @param {WebSocket} ws
   * @param {{code: number}} ev the CloseEvent (or its code)
   */
  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._rejectPending(new SalonError("disconnected", "the connection to the server was lost"));
    if (this.state !== "connected") return;
    if (FATAL_CLOSE_CODES.has(ev.code)) {
      const error = ev.code === 4002 ? new SalonError("token_expired", "the token has expired", ev.code) : null;
      this._finish(ev.code === 4009 ? "forceDisconnected" : "networkDisconnected", error);
      return;
    }
    this._reconnect();
  }

  /** @param {SalonError} error */
  _rejectPending(error) {
    for (const { reject } of this._pending.values()) reject(error);
    this._pending.clear();
  }

  async _reconnect() {
    this.state = "reconnecting";
    /** @type {{connection_id: string, secret: string}|null} */
    let resume = this._resumeSecret && this.connection
      ? { connection_id: this.connection.connectionId, secret: this._resumeSecret }
      : null;
    if (!resume && this._resumeOnly) {
      // Nothing to resume (the server keeps no connection for a resume): the session ends.
      this._finish("networkDisconnected");
      return;
    }
    // Resuming keeps the media running meanwhile (it flows if only the signalling broke).
    if (!resume) this._stopMedia();
    this.emit("sessionReconnecting");
    const deadline = Date.now() + this.reconnectTimeout * 1000;
    let delay = 250;
    let wait = delay;
    let failedInRound = 0;
    let refreshed = false;
    /** @type {SalonError|null} */
    let error = null;
    while (this.state === "reconnecting" && Date.now() < deadline) {
      await sleep(wait);
      if (wait > 0) delay = Math.min(delay * 2, 4000);
      wait = delay;
      if (this.state !== "reconnecting") return;
      try {
        const connected = await this._open(resume);
        if (this.state !== "reconnecting") {
          this._closeSocket();
          return;
        }
        if (connected.resumed) await this._restoreResumed(connected);
        else await this._restore(connected);
        this._closeStale();
        await this._sendQueuedSignals();
        return;
      } catch (err) {
        error = /** @type {SalonError} */ (err);
        if (error.code === "resume_refused" && this._resumeOnly) break;
        if (error.code === "resume_refused") {
          // The server no longer has the connection (its grace period ended): connect afresh.
          resume = null;
          this._stopMedia();
          wait = 0;
          continue;
        }
        if (error.code === "token_expired" && this._refreshToken && !refreshed) {
          // The token was good at connect but not any more: ask the application for a new one.
          refreshed = true;
          try {
            this._token = await this._refreshToken();
            wait = 0;
            continue;
          } catch (refusal) {
            console.warn("salon: refreshToken failed", refusal);
          }
        }
        if (error.closeCode && FATAL_CLOSE_CODES.has(error.closeCode)) break;
        if (movesOn(error) && this.urls.length > 1) {
          // This server cannot be reached (or is draining): the next one, at once while
          // this round has servers left.
          this._nextUrl();
          failedInRound += 1;
          if (failedInRound < this.urls.length) wait = 0;
          else failedInRound = 0;
        }
      }
    }
    if (this.state === "reconnecting") {
      const refused = error?.code === "resume_refused" || (error?.closeCode && FATAL_CLOSE_CODES.has(error.closeCode));
      const fatal = refused ? error : null;
      this._finish("networkDisconnected", fatal);
    }
  }

  /**
   * The server resumed the connection: same connection and stream IDs, the server kept the
   * subscriptions, the others saw nothing. Take in what changed meanwhile, then set every
   * publisher's media up again under its stream ID and subscribe again on a new receiving
   * peer connection (the old ones closed once the new ones are up).
   * @param {ConnectedMessage} connected
   */
  async _restoreResumed(connected) {
    const own = /** @type {Connection} */ (this.connection).connectionId;
    // The subscriptions to set up again: those from before that are still there (an app
    // subscribing from the streamCreated handlers below subscribes on the new receiving peer
    // connection already; the subscribers of streams gone meanwhile are destroyed below).
    const subscribers = [...this.subscribers];
    this._adopt(connected, true);
    this.state = "connected";
    const connections = new Map(connected.connections.map((c) => [c.connection_id, toConnection(c)]));
    connections.set(own, /** @type {Connection} */ (this.connection));
    const present = new Set(connected.streams.map((s) => s.stream_id));
    for (const id of [...this.streams.keys()]) {
      if (!present.has(id)) this._streamGone(id, "networkDisconnected");
    }
    for (const [id, c] of this.connections) {
      if (id !== own && !connections.has(id)) this.emit("connectionDestroyed", { connection: c, reason: "networkDisconnected" });
    }
    const before = this.connections;
    this.connections = connections;
    for (const [id, c] of connections) {
      if (!before.has(id) && c !== this.connection) this.emit("connectionCreated", { connection: c });
    }
    for (const raw of connected.streams) {
      if (raw.connection_id !== own && !this.streams.has(raw.stream_id)) {
        const s = toStream(raw, this.connections);
        this.streams.set(s.streamId, s);
        this.emit("streamCreated", { stream: s });
      }
    }
    const oldReceiving = this._subscribePc;
    this._subscribePc = null;
    this._subscribeOwners.clear();
    this._subscribeTrickle = null;
    const republish = [...this.publishers].map(async (p) => {
      const streamId = p.stream ? p.stream.streamId : null;
      try {
        try {
          await this._negotiatePublisher(p, streamId);
        } catch (err) {
          if (!streamId || /** @type {SalonError} */ (err).code !== "not_found") throw err;
          p.stream = null; // the stream ended meanwhile: publish a new one
          await this._negotiatePublisher(p);
        }
      } catch (err) {
        this.publishers.delete(p);
        p._closePeer();
        p.emit("streamDestroyed", { stream: null, reason: "networkDisconnected", error: err });
      }
    });
    const resubscribe = subscribers.filter((s) => this.subscribers.has(s)).map(async (s) => {
      s.transceivers = []; // on the old receiving peer connection, closed below
      try {
        await this._negotiateSubscriber(s);
      } catch (err) {
        this.subscribers.delete(s);
        s._destroy("networkDisconnected");
      }
    });
    await Promise.all([...republish, ...resubscribe]);
    oldReceiving?.close();
    this.emit("sessionReconnected", { resumed: true });
  }

  /** @param {ConnectedMessage} connected */
  async _restore(connected) {
    const oldConnectionId = this.connection?.connectionId;
    const subscribers = [...this.subscribers]; // as in _restoreResumed
    this._adopt(connected, true);
    this.state = "connected";
    // Diff what we knew against what the session holds now.
    const connections = new Map(connected.connections.map((c) => [c.connection_id, toConnection(c)]));
    connections.set(/** @type {Connection} */ (this.connection).connectionId, /** @type {Connection} */ (this.connection));
    const present = new Set(connected.streams.map((s) => s.stream_id));
    for (const p of this.publishers) if (p.stream) present.add(p.stream.streamId); // re-published below
    for (const id of [...this.streams.keys()]) {
      const stream = /** @type {Stream} */ (this.streams.get(id));
      const ours = stream.connection.connectionId === oldConnectionId;
      if (!present.has(id) && !ours) this._streamGone(id, "networkDisconnected");
    }
    for (const [id, c] of this.connections) {
      if (id !== oldConnectionId && !connections.has(id)) this.emit("connectionDestroyed", { connection: c, reason: "networkDisconnected" });
    }
    const before = this.connections;
    this.connections = connections;
    for (const [id, c] of connections) {
      if (!before.has(id) && c !== this.connection) this.emit("connectionCreated", { connection: c });
    }
    for (const raw of connected.streams) {
      if (!this.streams.has(raw.stream_id)) {
        const s = toStream(raw, this.connections);
        this.streams.set(s.streamId, s);
        this.emit("streamCreated", { stream: s });
      }
    }
    const republish = [...this.publishers].map(async (p) => {
      p.stream = null;
      try {
        await this._negotiatePublisher(p);
      } catch (err) {
        this.publishers.delete(p);
        p.emit("streamDestroyed", { stream: null, reason: "networkDisconnected", error: err });
      }
    });
    const resubscribe = subscribers.filter((s) => this.subscribers.has(s)).map(async (s) => {
      try {
        await this._negotiateSubscriber(s);
      } catch (err) {
        this.subscribers.delete(s);
        s._destroy("networkDisconnected");
      }
    });
    await Promise.all([...republish, ...resubscribe]);
    this.emit("sessionReconnected", { resumed: false });
  }

  /**
   * @param {string} reason
   * @param {SalonError|null} [error] why reconnecting was refused (e.g. `token_expired`), if it was
   */
  _finish(reason, error = null) {
    const wasConnected = this.state !== "disconnected";
    this.state = "disconnected";
    if (this._watchdog) clearInterval(this._watchdog);
    this._watchdog = null;
    this._rejectPending(new SalonError("disconnected", "the session was disconnected"));
    for (const queued of this._queuedSignals.splice(0)) {
      queued.reject(new SalonError("disconnected", "the session ended before the signal was sent"));
    }
    this._closeStale();
    this._closeSocket();
    for (const p of this.publishers) {
      p._closePeer();
      const stream = p.stream;
      p.stream = null;
      p.session = null;
      if (stream) p.emit("streamDestroyed", { stream, reason });
    }
    this.publishers.clear();
    for (const s of this.subscribers) s._destroy(reason);
    this.subscribers.clear();
    this._closeSubscribePc();
    this.streams.clear();
    this.connections.clear();
    if (wasConnected) this.emit("sessionDisconnected", error ? { reason, error } : { reason });
  }

  _closeSocket() {
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  /**
   * Publish a publisher's media. Resolves once the server accepted it (the others see
   * `streamCreated` when its media reaches the server).
   * @param {Publisher} publisher
   * @returns {Promise<Publisher>}
   */
  async publish(publisher) {
    if (this.state !== "connected") throw new SalonError("not_connected", "connect before publishing");
    await publisher.ready;
    publisher.session = this;
    this.publishers.add(publisher);
    try {
      await this._negotiatePublisher(publisher);
    } catch (err) {
      this.publishers.delete(publisher);
      publisher._closePeer();
      publisher.session = null;
      throw err;
    }
    return publisher;
  }

  /**
   * Gather trickled candidates until the stream/subscription exists, then send them.
   * @param {RTCPeerConnection} pc
   * @returns {(target: object) => void} call with {stream_id} or {subscription_id}
   */
  _trickle(pc) {
    /** @type {(string|null)[]} */
    const queued = [];
    /** @type {object|null} */
    let target = null;
    const send = (/** @type {string|null} */ candidate) => {
      if (this.state !== "connected" || !target) return;
      this._request({ type: "ice_candidate", ...target, candidate }).catch(() => {
        // a candidate the server cannot use (e.g. an mDNS name) is not fatal
      });
    };
    pc.onicecandidate = (ev) => {
      const candidate = ev.candidate ? ev.candidate.candidate : null;
      if (candidate === "") return;
      if (target) send(candidate);
      else queued.push(candidate);
    };
    return (t) => {
      target = t;
      for (const c of queued.splice(0)) send(c);
    };
  }

  /**
   * Publish a new stream, or (`streamId`, after a resume) set the media of that existing
   * stream up again from a new peer connection: the same stream, no `streamCreated`; the old
   * peer connection is closed once the new one is answered (closed earlier, the server could
   * see the stream's media stop and end it).
   * @param {Publisher} publisher
   * @param {string|null} [streamId]
   */
  async _negotiatePublisher(publisher, streamId = null) {
    const media = /** @type {MediaStream} */ (publisher.mediaStream);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    const previous = streamId ? publisher.pc : null;
    publisher.pc = pc;
    for (const track of media.getTracks()) {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: "sendonly", streams: [media] };
      const encodings =
        track.kind === "video"
          ? simulcastEncodings(publisher.videoSource, publisher.options.simulcast !== false, track.getSettings())
          : undefined;
      if (encodings) init.sendEncodings = encodings;
      const transceiver = pc.addTransceiver(track, init);
      if (track.kind === "video" && publisher.options.videoCodec) preferCodec(transceiver, publisher.options.videoCodec);
    }
    const ready = this._trickle(pc);
    await pc.setLocalDescription(await pc.createOffer());
    const video = publisher.videoTrack;
    const settings = video ? video.getSettings() : {};
    const reply = await this._request({
      type: "publish",
      name: publisher.name,
      has_audio: !!publisher.audioTrack && publisher._audioOn,
      has_video: !!video && publisher._videoOn,
      video_type: video ? publisher.videoSource : null,
      width: settings.width || null,
      height: settings.height || null,
      frame_rate: settings.frameRate ? Math.min(240, settings.frameRate) : null,
      sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
      ...(streamId ? { stream_id: streamId } : {}),
    }).catch((err) => {
      pc.close();
      if (previous) publisher.pc = previous;
      throw err;
    });
    publisher.stream = toStream(reply.stream, this.connections);
    ready({ stream_id: publisher.stream.streamId });
    await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
    previous?.close();
    if (!streamId) publisher.emit("streamCreated", { stream: publisher.stream });
  }

  /**
   * Stop publishing (the publisher keeps its devices open; `publisher.destroy()` closes them).
   * @param {Publisher} publisher
   */
  async unpublish(publisher) {
    const stream = publisher.stream;
    this.publishers.delete(publisher);
    publisher.stream = null;
    publisher.session = null;
    try {
      // Tell the server before closing the peer connection: else the media plane may see the
      // media stop first and destroy the stream as `mediaStopped`, and `unpublish` then fails.
      if (stream && this.state === "connected") {
        await this._request({ type: "unpublish", stream_id: stream.streamId });
      }
    } catch (err) {
      if (/** @type {SalonError} */ (err).code !== "not_found") throw err; // not_found: gone already
    } finally {
      publisher._closePeer();
    }
  }

  /**
   * Receive a stream and render it into an element.
   * @param {Stream} stream
   * @param {HTMLElement|string|null} [element]
   * @param {SubscriberOptions} [options]
   * @returns {Promise<Subscriber>}
   */
  async subscribe(stream, element = null, options = {}) {
    if (this.state !== "connected") throw new SalonError("not_connected", "connect before subscribing");
    const subscriber = new Subscriber(stream, resolveElement(element), options);
    subscriber.session = this;
    this.subscribers.add(subscriber);
    try {
      await this._negotiateSubscriber(subscriber);
    } catch (err) {
      this.subscribers.delete(subscriber);
      subscriber._destroy("subscribeFailed");
      throw err;
    }
    if (subscriber.videoElement) subscriber.emit("videoElementCreated", { element: subscriber.videoElement });
    return subscriber;
  }

  /**
   * Subscribe on the session's one receiving peer connection: add the subscriber's `recvonly`
   * transceivers, offer the whole connection again, apply the server's answer (which covers
   * every m-line). One negotiation at a time (docs/protocol.md §13.3).
   * @param {Subscriber} subscriber
   */
  _negotiateSubscriber(subscriber) {
    const run = this._subscribeQueue.then(() => this._negotiateSubscriberNow(subscriber));
    this._subscribeQueue = run.catch(() => {});
    return run;
  }

  /**
   * @param {Subscriber} subscriber
   * @param {boolean} [retried] whether this is the retry after `transport_closed`
   * @returns {Promise<void>}
   */
  async _negotiateSubscriberNow(subscriber, retried = false) {
    if (this.state !== "connected") throw new SalonError("not_connected", "the session is not connected");
    const old = subscriber.subscriptionId;
    subscriber._closePeer();
    subscriber.subscriptionId = null;
    if (old) {
      this._request({ type: "unsubscribe", subscription_id: old }).catch(() => {});
    }
    const stream = subscriber.stream;
    const pc = this._receivingPeer();
    const kinds = new Set();
    if (stream.hasAudio) kinds.add("audio");
    if (stream.hasVideo) kinds.add("video");
    const transceivers = [...kinds].map((kind) => pc.addTransceiver(kind, { direction: "recvonly" }));
    subscriber.kinds = kinds;
    await pc.setLocalDescription(await pc.createOffer());
    for (const transceiver of transceivers) {
      if (transceiver.mid) this._subscribeOwners.set(transceiver.mid, subscriber);
    }
    subscriber.transceivers = transceivers;
    let reply;
    try {
      reply = await this._request({
        type: "subscribe",
        stream_id: stream.streamId,
        audio: subscriber.audioOn,
        video: subscriber.videoOn,
        sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
        ...subscriber._wirePreferences(),
      });
    } catch (err) {
      // Refused: take the offer back; its new transceivers go (they never had an answer).
      subscriber.transceivers = [];
      for (const transceiver of transceivers) {
        if (transceiver.mid) this._subscribeOwners.delete(transceiver.mid);
        if (pc.signalingState !== "closed") transceiver.stop();
      }
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      if (/** @type {SalonError} */ (err).code === "transport_closed" && !retried && this._subscribePc === pc) {
        // The peer connection's transport died with a media worker (and the `media_reset`
        // that says so was missed): subscribe from a new one, and move the others there too.
        const others = this._replaceReceivingPeer().filter((s) => s !== subscriber);
        await this._negotiateSubscriberNow(subscriber, true);
        for (const other of others) {
          this._negotiateSubscriber(other).catch((e) => console.warn("salon: re-subscribe failed", e));
        }
        return;
      }
      throw err;
    }
    subscriber.subscriptionId = reply.subscription_id;
    const heldBack = subscriber.videoDisabledReason;
    subscriber.videoDisabledReason = null;
    // A new subscription (after a reconnection) starts with its video: say so.
    if (heldBack) subscriber.emit("videoEnabled", { reason: heldBack });
    this._subscribeTrickle?.({ subscription_id: reply.subscription_id });
    this._subscribeTrickle = null; // the transport is the same for every later subscription
    await pc.setRemoteDescription({ type: "answer", sdp: reply.answer });
  }

  /** The receiving peer connection, made on first use. */
  _receivingPeer() {
    if (this._subscribePc) return this._subscribePc;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    this._subscribePc = pc;
    this._subscribeTrickle = this._trickle(pc);
    pc.ontrack = (ev) => {
      const owner = ev.transceiver.mid ? this._subscribeOwners.get(ev.transceiver.mid) : undefined;
      if (!owner) return;
      owner.mediaStream.addTrack(ev.track);
      if (owner.videoElement) owner.videoElement.play?.().catch(() => {});
    };
    return pc;
  }

  _closeSubscribePc() {
    this._subscribePc?.close();
    this._subscribePc = null;
    this._subscribeOwners.clear();
    this._subscribeTrickle = null;
  }

  /** @param {Subscriber} subscriber */
  async unsubscribe(subscriber) {
    this.subscribers.delete(subscriber);
    const id = subscriber.subscriptionId;
    subscriber.subscriptionId = null;
    try {
      // As for unpublish: the request first, then the peer connection closes.
      if (id && this.state === "connected") await this._request({ type: "unsubscribe", subscription_id: id });
    } catch (err) {
      if (/** @type {SalonError} */ (err).code !== "not_found") throw err;
    } finally {
      subscriber._destroy("unsubscribed");
    }
  }

  /**
   * Send a signal to the whole session, or to one connection (`to`). With
   * `retryAfterReconnect` (as in OpenTok.js), a signal sent while the session is reconnecting
   * (or whose socket drops before the server answered) waits, and is sent once reconnected;
   * the promise resolves then. At most 100 wait; the session ending rejects them.
   * @param {{type?: string, data?: string, to?: Connection|string, retryAfterReconnect?: boolean}} signal
   */
  async signal({ type = "", data = "", to, retryAfterReconnect = false } = {}) {
    const target = to == null ? null : typeof to === "string" ? to : to.connectionId;
    /** @type {ClientRequestBody} */
    const message = { type: "signal", signal_type: type, data, to: target };
    if (retryAfterReconnect && this.state === "reconnecting") return this._queueSignal(message);
    try {
      await this._request(message);
    } catch (err) {
      if (!(retryAfterReconnect && this.state === "reconnecting" && /** @type {SalonError} */ (err).code === "disconnected")) throw err;
      await this._queueSignal(message);
    }
  }

  /**
   * @param {ClientRequestBody} message
   * @returns {Promise<void>}
   */
  _queueSignal(message) {
    if (this._queuedSignals.length >= MAX_QUEUED_SIGNALS) {
      return Promise.reject(new SalonError("too_many_signals", `${MAX_QUEUED_SIGNALS} signals wait for the reconnection already`));
    }
    return new Promise((resolve, reject) => this._queuedSignals.push({ message, resolve, reject }));
  }

  /** Send the signals that waited for the reconnection, in order. */
  async _sendQueuedSignals() {
    while (this._queuedSignals.length && this.state === "connected") {
      const queued = /** @type {(typeof this._queuedSignals)[number]} */ (this._queuedSignals.shift());
      try {
        await this._request(queued.message);
        queued.resolve();
      } catch (err) {
        queued.reject(/** @type {SalonError} */ (err));
      }
    }
  }

  /**
   * Moderators: force a connection out.
   * @param {Connection|string} connection
   */
  async forceDisconnect(connection) {
    const id = typeof connection === "string" ? connection : connection.connectionId;
    await this._request({ type: "force_disconnect", connection_id: id });
  }

  /**
   * Moderators: destroy another connection's stream.
   * @param {Stream|string} stream
   */
  async forceUnpublish(stream) {
    const id = typeof stream === "string" ? stream : stream.streamId;
    await this._request({ type: "force_unpublish", stream_id: id });
  }

  /**
   * Moderators: mute a stream's audio.
   * @param {Stream|string} stream
   */
  async forceMuteStream(stream) {
    const id = typeof stream === "string" ? stream : stream.streamId;
    await this._request({ type: "force_mute", stream_id: id });
  }

  /**
   * Moderators: mute every stream but `excluded`.
   * @param {(Stream|string)[]} [excluded]
   */
  async forceMuteAll(excluded = []) {
    const ids = excluded.map((s) => (typeof s === "string" ? s : s.streamId));
    await this._request({ type: "force_mute", stream_id: null, excluded_stream_ids: ids });
  }

  /** Moderators: switch off the mute-all state, so that streams published later keep their audio. */
  async disableForceMute() {
    await this._request({ type: "force_mute", active: false });
  }
}

/**
 * A session object for `sessionId` (not connected yet: call `connect(token)`).
 * @param {string} sessionId
 * @param {SessionOptions} [options]
 * @returns {Session}
 */
export function initSession(sessionId, options = {}) {
  return new Session(sessionId, options);
}

/**
 * A publisher rendering the local camera/microphone (or screen) into `element`. The devices
 * open in the background: await `publisher.ready`, or listen for `accessAllowed`/`accessDenied`.
 * @param {HTMLElement|string|null} [element]
 * @param {PublisherOptions} [options]
 * @returns {Publisher}
 */
export function initPublisher(element = null, options = {}) {
  return new Publisher(element, options);
}
