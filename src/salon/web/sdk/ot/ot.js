// The `OT` object of OpenTok.js 2.x, on salon. docs/opentok-js.md says what is there, what is
// not yet (docs/opentok-js-missing.json) and what behaves differently.
import { VERSION } from "../salon.js";
import { Event } from "./events.js";
import { OTError, ExceptionCodes, exceptions, report, done, toOTError } from "./errors.js";
import { Session, Stream, Connection } from "./session.js";
import { Publisher } from "./publisher.js";
import { Subscriber } from "./subscriber.js";
import { config, log, originOf } from "./config.js";
import { openMedia, listDevices, listAudioOutputs, supportedCodecs } from "./media.js";

/**
 * OT.initSession(apiKey, sessionId, options): a Session, not connected yet.
 * @param {string} apiKey
 * @param {string} sessionId
 * @param {any} [options]
 */
function initSession(apiKey, sessionId, options) {
  started = true;
  return new Session(apiKey, sessionId, options);
}

/** Whether a Session or Publisher was made (OT.setProxyUrl must come before). */
let started = false;
let proxySet = false;

/**
 * OT.initPublisher(targetElement, properties, completionHandler): a Publisher, at once; the
 * handler is called when the devices are open (or with the error).
 * @param {HTMLElement|string|null|undefined|Function} [target]
 * @param {any} [properties]
 * @param {Function} [completionHandler]
 */
function initPublisher(target, properties, completionHandler) {
  if (typeof target === "function") [target, properties, completionHandler] = [undefined, undefined, target];
  else if (typeof properties === "function") [properties, completionHandler] = [undefined, properties];
  started = true;
  return new Publisher(/** @type {any} */ (target), properties, completionHandler);
}
initPublisher.promise = (/** @type {any} */ target, /** @type {any} */ properties) =>
  new Promise((resolve, reject) => {
    const publisher = initPublisher(target, properties, (/** @type {any} */ err) => (err ? reject(err) : resolve(publisher)));
  });

/** 1 when this browser has what salon needs (WebRTC and media devices), else 0. */
function checkSystemRequirements() {
  return typeof RTCPeerConnection === "function" && !!navigator.mediaDevices ? 1 : 0;
}

/** Tell the user (an overlay on the page) that this browser cannot run the app. */
function upgradeSystemRequirements() {
  if (document.getElementById("OT_upgrade")) return;
  const box = document.createElement("div");
  box.id = "OT_upgrade";
  box.setAttribute("role", "alert");
  box.style.cssText = "position:fixed;inset:0;z-index:2147483647;display:flex;align-items:center;justify-content:center;background:rgba(0,0,0,.8);color:#fff;font:16px sans-serif;text-align:center;padding:2em";
  box.textContent = "This browser cannot make video calls (it lacks WebRTC). Please use a current version of Chrome, Firefox, Safari or Edge.";
  const close = document.createElement("button");
  close.textContent = "Close";
  close.style.marginLeft = "1em";
  close.onclick = () => box.remove();
  box.appendChild(close);
  document.body.appendChild(box);
}

/**
 * @param {Function} [callback] (error, devices)
 */
async function getDevices(callback) {
  try {
    const devices = await listDevices();
    done(callback, devices);
    return devices;
  } catch (err) {
    const error = toOTError(err, "other");
    if (typeof callback === "function") callback(error);
    throw error;
  }
}

/**
 * @param {Function} [callback] (response)
 */
async function checkScreenSharingCapability(callback) {
  const supported = typeof navigator.mediaDevices?.getDisplayMedia === "function";
  const response = {
    supported,
    supportedSources: { screen: supported, window: supported, application: false, browser: supported },
    extensionRequired: undefined,
    extensionInstalled: undefined,
    extensionRegistered: undefined,
  };
  if (typeof callback === "function") callback(response);
  return response;
}

/** @param {string} deviceId an audio output's device ID (from OT.getAudioOutputDevices) */
async function setAudioOutputDevice(deviceId) {
  const outputs = await listAudioOutputs();
  if (deviceId !== "default" && deviceId !== "" && !outputs.some((o) => o.deviceId === deviceId)) {
    throw new OTError("OT_INVALID_AUDIO_OUTPUT_SOURCE", `no audio output with the device ID ${deviceId}`, 1011);
  }
  config.audioOutputDeviceId = deviceId;
  for (const sub of config.subscribers) sub._applySink();
}

async function getActiveAudioOutputDevice() {
  const outputs = await listAudioOutputs();
  const id = config.audioOutputDeviceId ?? "default";
  return outputs.find((o) => o.deviceId === id) || { deviceId: id, label: null };
}

/** Play every subscriber's audio that autoplay blocked (call from a click). */
async function unblockAudio() {
  await Promise.all([...config.subscribers].map((s) => s._unblock()));
  return undefined;
}

/**
 * Set the salon server this OT talks to (default: the server the script was loaded from).
 * @param {string} url e.g. "https://salon.example.com"
 */
function setServerUrl(url) {
  config.serverUrl = String(url || "").replace(/\/+$/, "");
}

/**
 * OT.setProxyUrl: talk to salon through the reverse proxy at `url` (OpenTok.js's IP proxy),
 * with OpenTok.js's rules: before any initSession / initPublisher, and once.
 * @param {string} url
 */
function setProxyUrl(url) {
  const target = { setProxyUrl: url };
  if (started) {
    report(new OTError("OT_SET_PROXY_URL_TIMING_ERROR", "OT.setProxyUrl must be called before OT.initSession and OT.initPublisher", 2021), target);
  } else if (proxySet) {
    report(new OTError("OT_PROXY_URL_ALREADY_SET_ERROR", "the proxy URL is already set", 2022), target);
  } else {
    proxySet = true;
    setServerUrl(url);
  }
}

export const OT = {
  /** OpenTok.js's version this layer follows; salon's own SDK version is `salonVersion`. */
  version: "2.35.2",
  salonVersion: VERSION,
  NONE: 0,
  ERROR: 1,
  WARN: 2,
  INFO: 3,
  LOG: 4,
  DEBUG: 5,
  initSession,
  initPublisher,
  checkSystemRequirements,
  upgradeSystemRequirements,
  getDevices,
  getAudioOutputDevices: listAudioOutputs,
  setAudioOutputDevice,
  getActiveAudioOutputDevice,
  /** @param {any} [properties] GetUserMediaProperties */
  getUserMedia: (properties) => openMedia({ ...(properties || {}) }),
  getSupportedCodecs: async () => supportedCodecs(),
  checkScreenSharingCapability,
  /** No media processors on salon yet (docs/opentok-js.md): false, truthfully. */
  hasMediaProcessorSupport: Object.assign(() => false, { promise: async () => false }),
  /** No end-to-end encryption on salon yet: false, truthfully. */
  hasEndToEndEncryptionSupport: () => false,
  /** Chromium, Firefox and Safari share the screen without an extension: nothing to register. */
  registerScreenSharingExtension: (/** @type {string} */ _kind, /** @type {string} */ _id, /** @type {number} */ _version) => {},
  /** @param {number} level OT.NONE … OT.DEBUG */
  setLogLevel: (level) => {
    config.logLevel = Number(level) || 0;
  },
  /** @param {string} message */
  log: (message) => log(4, message),
  unblockAudio,
  setServerUrl,
  setProxyUrl,
  /** @param {any} type @param {any} [handler] @param {any} [context] */
  on: (type, handler, context) => {
    exceptions.on(type, handler, context);
  },
  /** @param {any} type @param {any} [handler] @param {any} [context] */
  once: (type, handler, context) => {
    exceptions.once(type, handler, context);
  },
  /** @param {any} [type] @param {any} [handler] @param {any} [context] */
  off: (type, handler, context) => {
    exceptions.off(type, handler, context);
  },
  Session,
  Publisher,
  Subscriber,
  Stream,
  Connection,
  Event,
  Error: OTError,
  ExceptionCodes,
  /** For code that reports errors as OpenTok.js's handleJsException does. */
  _report: report,
};

/**
 * The default server: where the script came from (set by the entry module).
 * @param {string|null|undefined} scriptUrl
 */
export function useScriptOrigin(scriptUrl) {
  const origin = originOf(scriptUrl);
  if (origin && !config.serverUrl) config.serverUrl = origin;
}

export default OT;
