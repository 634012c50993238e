// State shared by the OpenTok.js layer: the server to talk to, the log level, the audio output
// device, and the live subscribers (for OT.unblockAudio and OT.setAudioOutputDevice).

export const config = {
  /** @type {string} the salon server's http(s) origin; "" means this page's origin */
  serverUrl: "",
  /** OT.setLogLevel: 0 none … 5 debug (OT.NONE … OT.DEBUG) */
  logLevel: 1,
  /** @type {string|null} OT.setAudioOutputDevice: the sink of every subscriber's audio */
  audioOutputDeviceId: null,
  /** @type {Set<{_applySink: () => void, _unblock: () => Promise<void>}>} */
  subscribers: new Set(),
};

/** The server origin of a script URL, e.g. https://salon.example.com/v2/js/opentok.js → https://salon.example.com */
export function originOf(/** @type {string|null|undefined} */ url) {
  try {
    const parsed = url ? new URL(url) : null;
    return parsed && /^https?:$/.test(parsed.protocol) ? parsed.origin : "";
  } catch {
    return "";
  }
}

/**
 * Log at OpenTok.js's levels (ERROR 1, WARN 2, INFO 3, LOG 4, DEBUG 5).
 * @param {number} level
 * @param {...any} args
 */
export function log(level, ...args) {
  if (level > config.logLevel) return;
  const method = level <= 1 ? "error" : level === 2 ? "warn" : level === 3 ? "info" : "log";
  console[method]("OT:", ...args);
}
