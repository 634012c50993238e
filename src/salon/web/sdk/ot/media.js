// Devices and media for the OpenTok.js layer: OpenTok's audioSource / videoSource (a device ID,
// false or null, "screen", or a MediaStreamTrack), resolution, frameRate, facingMode and the
// audio processing switches, turned into getUserMedia / getDisplayMedia calls.
import { OTError } from "./errors.js";

/** @typedef {string|boolean|null|undefined|MediaStreamTrack} Source */

const SCREEN_SOURCES = new Set(["screen", "window", "application", "browser"]);

/** @param {Source} source @returns {boolean} */
export function isScreen(source) {
  return typeof source === "string" && SCREEN_SOURCES.has(source);
}

/** @param {Source} source @returns {boolean} whether the source asks for no track at all */
export function isOff(source) {
  return source === false || source === null;
}

/**
 * The video constraints of OpenTok's properties.
 * @param {any} props
 * @returns {MediaTrackConstraints}
 */
function videoConstraints(props) {
  /** @type {MediaTrackConstraints} */
  const video = {};
  if (typeof props.resolution === "string") {
    const [w, h] = props.resolution.split("x").map(Number);
    if (w && h) Object.assign(video, { width: { ideal: w }, height: { ideal: h } });
  }
  if (props.maxResolution?.width && props.maxResolution?.height) {
    Object.assign(video, { width: { max: props.maxResolution.width }, height: { max: props.maxResolution.height } });
  }
  if (props.frameRate) video.frameRate = { ideal: Number(props.frameRate) };
  if (props.facingMode) video.facingMode = props.facingMode;
  if (typeof props.videoSource === "string" && !isScreen(props.videoSource)) {
    video.deviceId = { exact: props.videoSource };
  }
  return video;
}

/**
 * The audio constraints of OpenTok's properties.
 * @param {any} props
 * @returns {MediaTrackConstraints}
 */
function audioConstraints(props) {
  /** @type {MediaTrackConstraints} */
  const audio = {};
  if (typeof props.audioSource === "string") audio.deviceId = { exact: props.audioSource };
  if (props.disableAudioProcessing) {
    Object.assign(audio, { echoCancellation: false, noiseSuppression: false, autoGainControl: false });
  }
  for (const key of /** @type {const} */ (["echoCancellation", "noiseSuppression", "autoGainControl"])) {
    if (typeof props[key] === "boolean") audio[key] = props[key];
  }
  if (props.enableStereo) audio.channelCount = 2;
  return audio;
}

/**
 * Open the media OpenTok's publisher properties ask for: one MediaStream with at most one audio
 * and one video track. Errors are the browser's (DOMException), mapped by the SDK.
 * @param {any} props
 * @returns {Promise<MediaStream>}
 */
export async function openMedia(props) {
  const { audioSource, videoSource } = props;
  const wantAudio = !isOff(audioSource);
  const wantVideo = !isOff(videoSource);
  if (!wantAudio && !wantVideo) {
    throw new OTError("OT_NO_VALID_CONSTRAINTS", "Video and audio were both disabled. You need to enable at least one.", 1500);
  }
  /** @type {MediaStreamTrack[]} */
  const tracks = [];
  const askAudio = wantAudio && !(audioSource instanceof MediaStreamTrack);
  const askVideo = wantVideo && !(videoSource instanceof MediaStreamTrack);
  if (audioSource instanceof MediaStreamTrack) tracks.push(audioSource);
  if (videoSource instanceof MediaStreamTrack) tracks.push(videoSource);
  const md = navigator.mediaDevices;
  if (isScreen(videoSource)) {
    if (!md?.getDisplayMedia) {
      throw new OTError("OT_SCREEN_SHARING_NOT_SUPPORTED", "Screen sharing is not supported in the browser.", 1500);
    }
    const screen = await md.getDisplayMedia({ video: Object.keys(videoConstraints({ ...props, videoSource: undefined })).length ? videoConstraints({ ...props, videoSource: undefined }) : true, audio: false });
    tracks.push(...screen.getVideoTracks());
    if (askAudio) {
      const mic = await md.getUserMedia({ audio: Object.keys(audioConstraints(props)).length ? audioConstraints(props) : true });
      tracks.push(...mic.getAudioTracks());
    }
  } else if (askAudio || askVideo) {
    if (!md?.getUserMedia) {
      throw new OTError("OT_NOT_SUPPORTED", "camera access needs a secure page (https or localhost)", 1500);
    }
    const audio = audioConstraints(props);
    const video = videoConstraints(props);
    const media = await md.getUserMedia({
      audio: askAudio ? (Object.keys(audio).length ? audio : true) : false,
      video: askVideo ? (Object.keys(video).length ? video : true) : false,
    });
    tracks.push(...media.getTracks());
  }
  return new MediaStream(tracks);
}

/**
 * OT.getDevices: the audio and video inputs (labels need a granted permission, as in OpenTok.js).
 * @returns {Promise<{kind: "audioInput"|"videoInput", deviceId: string, label: string}[]>}
 */
export async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) {
    throw new OTError("OT_NOT_SUPPORTED", "this browser cannot list devices", 2000);
  }
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices
    .filter((d) => d.kind === "audioinput" || d.kind === "videoinput")
    .map((d) => ({ kind: d.kind === "audioinput" ? "audioInput" : "videoInput", deviceId: d.deviceId, label: d.label }));
}

/** @returns {Promise<{deviceId: string, label: string}[]>} */
export async function listAudioOutputs() {
  const devices = (await navigator.mediaDevices?.enumerateDevices?.()) || [];
  return devices.filter((d) => d.kind === "audiooutput").map((d) => ({ deviceId: d.deviceId, label: d.label }));
}

/**
 * The video codecs this browser can send and receive that salon forwards (VP8 and H.264).
 * @returns {{videoEncoders: ("H264"|"VP8")[], videoDecoders: ("H264"|"VP8")[]}}
 */
export function supportedCodecs() {
  /** @param {RTCRtpCapabilities|null|undefined} caps */
  const names = (caps) => {
    const have = new Set((caps?.codecs || []).map((c) => c.mimeType.toLowerCase()));
    return /** @type {("H264"|"VP8")[]} */ (["VP8", "H264"].filter((n) => have.has(`video/${n.toLowerCase()}`)));
  };
  return {
    videoEncoders: names(globalThis.RTCRtpSender?.getCapabilities?.("video")),
    videoDecoders: names(globalThis.RTCRtpReceiver?.getCapabilities?.("video")),
  };
}

/**
 * Whether the browser will show a permission prompt for these kinds (then OpenTok.js's
 * accessDialogOpened / accessDialogClosed events fire around it).
 * @param {boolean} audio
 * @param {boolean} video
 * @returns {Promise<boolean>}
 */
export async function willPrompt(audio, video) {
  const names = [...(audio ? ["microphone"] : []), ...(video ? ["camera"] : [])];
  try {
    for (const name of names) {
      const status = await navigator.permissions.query(/** @type {PermissionDescriptor} */ ({ name }));
      if (status.state === "prompt") return true;
    }
  } catch {
    // a browser without these permission names: no way to tell, say no dialog
  }
  return false;
}
