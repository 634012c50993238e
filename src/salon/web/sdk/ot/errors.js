// OpenTok.js errors: `name` (OT_…), numeric `code` and `message`, passed to completion
// handlers and dispatched as `exception` events on OT, as OpenTok.js does.
import { Event, EventEmitter } from "./events.js";

/** OpenTok.js's exception codes (`OT.ExceptionCodes`) and their titles. */
export const ExceptionCodes = Object.freeze({
  JS_EXCEPTION: 2000,
  AUTHENTICATION_ERROR: 1004,
  INVALID_SESSION_ID: 1005,
  CONNECT_FAILED: 1006,
  CONNECT_REJECTED: 1007,
  CONNECTION_TIMEOUT: 1008,
  NOT_CONNECTED: 1010,
  INVALID_PARAMETER: 1011,
  P2P_CONNECTION_FAILED: 1013,
  API_RESPONSE_FAILURE: 1014,
  PEER_CONNECTION_NOT_CONNECTED: 1015,
  CONNECTION_LIMIT_EXCEEDED: 1027,
  UNABLE_TO_PUBLISH: 1500,
  UNABLE_TO_SUBSCRIBE: 1501,
  UNABLE_TO_FORCE_DISCONNECT: 1520,
  UNABLE_TO_FORCE_UNPUBLISH: 1530,
  UNABLE_TO_FORCE_MUTE: 1540,
  STREAM_LIMIT_EXCEEDED: 1605,
  UNEXPECTED_SERVER_RESPONSE: 2001,
});

/** @type {Record<number, string>} */
const TITLES = {
  1004: "Authentication error",
  1005: "Invalid Session ID",
  1006: "Connect Failed",
  1007: "Connect Rejected",
  1008: "Connect Time-out",
  1010: "Not Connected",
  1011: "Invalid Parameter",
  1013: "Connection Failed",
  1014: "API Response Failure",
  1015: "PeerConnection not connected, cannot call this method",
  1027: "Connection Limit Exceeded",
  1500: "Unable to Publish",
  1501: "Unable to Subscribe",
  1520: "Unable to Force Disconnect",
  1530: "Unable to Force Unpublish",
  1540: "Unable to Force Mute",
  1605: "Stream Limit Exceeded",
  2000: "Internal Error",
  2001: "Unexpected Server Response",
  2021: "Proxy URL Timing Error",
  2022: "Proxy URL Already Set Error",
};

/** An OpenTok.js error: `name` is one of OpenTok's `OT_…` names. */
export class OTError extends Error {
  /**
   * @param {string} name e.g. "OT_AUTHENTICATION_ERROR"
   * @param {string} message
   * @param {number} [code] OpenTok's numeric code, e.g. 1004
   * @param {any} [cause] the salon error (a SalonError) it comes from
   */
  constructor(name, message, code, cause) {
    super(message);
    this.name = name;
    /** @type {number|undefined} */
    this.code = code;
    if (cause !== undefined) this.cause = cause;
  }
}

/**
 * What a salon error code becomes in each place it can happen: [name, OpenTok code].
 * @type {Record<string, [string, number]>}
 */
const CONNECT = {
  invalid_token: ["OT_AUTHENTICATION_ERROR", 1004],
  token_expired: ["OT_AUTHENTICATION_ERROR", 1004],
  not_found: ["OT_INVALID_SESSION_ID", 1005],
  timeout: ["OT_TIMEOUT", 1008],
  too_many_connections: ["OT_CONNECTION_LIMIT_EXCEEDED", 1027],
  capacity: ["OT_CONNECTION_LIMIT_EXCEEDED", 1027],
  already_connected: ["OT_INVALID_PARAMETER", 1011],
};
const MEDIA = {
  media_access_denied: "OT_USER_MEDIA_ACCESS_DENIED",
  media_device_not_found: "OT_NO_DEVICES_FOUND",
  media_device_busy: "OT_HARDWARE_UNAVAILABLE",
  screen_sharing_not_supported: "OT_SCREEN_SHARING_NOT_SUPPORTED",
  media_not_supported: "OT_NOT_SUPPORTED",
  media_error: "OT_UNABLE_TO_CAPTURE_MEDIA",
  invalid_parameter: "OT_NO_VALID_CONSTRAINTS",
};
/** Errors any request can end in. */
const COMMON = {
  not_connected: "OT_NOT_CONNECTED",
  disconnected: "OT_NOT_CONNECTED",
  permission_denied: "OT_PERMISSION_DENIED",
  not_found: "OT_NOT_FOUND",
  timeout: "OT_TIMEOUT",
  invalid_message: "OT_INVALID_PARAMETER",
  invalid_parameter: "OT_INVALID_PARAMETER",
  signal_too_large: "OT_INVALID_PARAMETER",
  rate_limited: "OT_RATE_LIMIT_EXCEEDED",
  too_many_streams: "OT_STREAM_LIMIT_EXCEEDED",
};

/**
 * The OpenTok.js error for a salon error (a SalonError, or anything thrown) in `context`.
 * @param {any} err
 * @param {"connect"|"publish"|"subscribe"|"signal"|"forceDisconnect"|"forceUnpublish"|"forceMute"|"other"} context
 * @returns {OTError}
 */
export function toOTError(err, context) {
  if (err instanceof OTError) return err;
  const code = String(err?.code || "");
  const message = String(err?.message || err);
  if (context === "connect") {
    const [name, num] = CONNECT[code] || ["OT_CONNECT_FAILED", 1006];
    return new OTError(name, message, num, err);
  }
  /** @type {Record<string, number>} */
  const codes = {
    publish: 1500,
    subscribe: 1501,
    forceDisconnect: 1520,
    forceUnpublish: 1530,
    forceMute: 1540,
    signal: 0,
    other: 0,
  };
  let num = codes[context] || undefined;
  if (context === "signal") {
    // OpenTok.js gives signal errors HTTP-like codes.
    /** @type {Record<string, number>} */
    const signalCodes = { not_connected: 500, disconnected: 500, invalid_message: 400, invalid_parameter: 400, signal_too_large: 413, rate_limited: 429, not_found: 404, permission_denied: 403 };
    num = signalCodes[code];
  }
  let name = /** @type {Record<string, string>} */ (COMMON)[code];
  if (context === "publish") name = /** @type {Record<string, string>} */ (MEDIA)[code] || name;
  if (context === "subscribe" && code === "not_found") name = "OT_STREAM_NOT_FOUND";
  if ((code === "not_connected" || code === "disconnected") && context !== "signal") num = 1010;
  if (!name) name = context === "subscribe" ? "OT_UNABLE_TO_SUBSCRIBE" : context === "publish" ? "OT_STREAM_CREATE_FAILED" : "OT_UNEXPECTED_SERVER_RESPONSE";
  return new OTError(name, message, num, err);
}

/** OT itself as an emitter: its `exception` events. */
export const exceptions = new EventEmitter();

/**
 * Hand an error to a completion handler (if any) and dispatch OT's `exception` event for it,
 * where OpenTok.js does both.
 * @param {OTError} error
 * @param {any} target the object it happened on (session, publisher, subscriber)
 * @param {Function|undefined|null} [completionHandler]
 */
export function report(error, target, completionHandler) {
  if (typeof completionHandler === "function") {
    try {
      completionHandler(error);
    } catch (err) {
      console.error("OT: a completion handler failed", err);
    }
  }
  const code = error.code ?? 2000;
  exceptions.dispatchEvent(
    new Event("exception", target, { code, message: error.message, title: TITLES[code] || "Internal Error", error }),
  );
}

/**
 * Call a completion handler with no error (ignoring a handler's own failure, as OpenTok.js does).
 * @param {Function|undefined|null} completionHandler
 * @param {...any} args
 */
export function done(completionHandler, ...args) {
  if (typeof completionHandler !== "function") return;
  try {
    completionHandler(undefined, ...args);
  } catch (err) {
    console.error("OT: a completion handler failed", err);
  }
}
