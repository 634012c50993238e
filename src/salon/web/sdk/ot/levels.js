// audioLevelUpdated as OpenTok.js dispatches it: periodically ("up to 60 times per second"),
// whether or not the level moved. Salon's server sends a stream's level only when it changes
// (docs/protocol.md §6.16: a stream not listed keeps its last level), so a steady voice or tone
// would give one event and then silence, and a listener added later would see nothing.
// A LevelRepeater dispatches each new level at once and repeats the last one while it holds.

/** How often the last level is dispatched again. */
export const LEVEL_INTERVAL_MS = 100;

export class LevelRepeater {
  /** @param {(level: number) => void} emit */
  constructor(emit) {
    this._emit = emit;
    /** @type {number|null} */
    this._level = null;
    /** @type {ReturnType<typeof setInterval>|null} */
    this._timer = null;
  }

  /**
   * A level the server measured: dispatched now, then every LEVEL_INTERVAL_MS until the next.
   * @param {number} level
   */
  set(level) {
    this._level = level;
    this._emit(level);
    if (this._timer === null) {
      this._timer = setInterval(() => {
        if (this._level !== null) this._emit(this._level);
      }, LEVEL_INTERVAL_MS);
    }
  }

  /** No more levels (the stream ended, or its publisher or subscriber is destroyed). */
  stop() {
    if (this._timer !== null) clearInterval(this._timer);
    this._timer = null;
    this._level = null;
  }
}
