// OT.Subscriber: a remote stream, rendered with OpenTok.js's default UI, on top of the salon
// SDK's Subscriber (one receiving peer connection per session).
import { EventEmitter } from "./events.js";
import { OTError, toOTError, report, done } from "./errors.js";
import { createWidget } from "./widget.js";
import { subscriberStats, imageData } from "./stats.js";
import { config, log } from "./config.js";
import { widgetId, withPromise } from "./publisher.js";
import { LevelRepeater } from "./levels.js";

/**
 * Returned by `session.subscribe(stream, target, properties, completionHandler)` at once; the
 * media follows. Events: audioBlocked, audioUnblocked, audioLevelUpdated, connected,
 * disconnected, destroyed, mediaStreamAvailable, videoDimensionsChanged, videoDisabled,
 * videoEnabled (reasons publishVideo, subscribeToVideo, quality), videoElementCreated.
 *
 * `setPreferredResolution` / `setPreferredFrameRate` (and the `preferredResolution` /
 * `preferredFrameRate` properties) ask the server for at most that much video: it forwards
 * the stream's layer that fits (docs/opentok-js.md). When the server stops the video because
 * this link cannot carry it, `videoDisabled` comes with reason `quality`, and `videoEnabled`
 * with reason `quality` when it comes back (OpenTok's audio fallback).
 */
export class Subscriber extends EventEmitter {
  /**
   * @param {any} session the OT.Session
   * @param {import("./session.js").Stream} stream
   * @param {HTMLElement|string|null|undefined} target
   * @param {any} properties OpenTok.js's SubscriberProperties
   */
  constructor(session, stream, target, properties) {
    super();
    const props = { ...(properties || {}) };
    this._props = props;
    this.id = widgetId();
    this.stream = stream;
    this.session = session;
    /** @type {HTMLElement|undefined} */
    this.element = undefined;
    /** @type {any} the salon SDK's Subscriber, once subscribed */
    this._salon = null;
    this._destroyed = false;
    this._levels = new LevelRepeater((level) => {
      this._widget?.setAudioLevel(level);
      this.trigger("audioLevelUpdated", { audioLevel: level });
    });
    /** set when a cancelled streamDestroyed / sessionDisconnected keeps the element */
    this._keep = false;
    this._audioOn = props.subscribeToAudio !== false;
    this._videoOn = props.subscribeToVideo !== false;
    /** the server stopped the video for quality (videoDisabled, reason quality) */
    this._qualityOff = false;
    /** @type {{width: number, height: number}|null} */
    this._preferredResolution = null;
    /** @type {number|null} */
    this._preferredFrameRate = null;
    try {
      // OpenTok.js's "auto" (adapt to the element's size) is no preference here.
      if (props.preferredResolution !== "auto") this._preferredResolution = otResolution(props.preferredResolution);
      this._preferredFrameRate = otFrameRate(props.preferredFrameRate);
    } catch (err) {
      log(2, "ignoring a subscriber preference", err);
    }
    this._volume = typeof props.audioVolume === "number" ? Math.max(0, Math.min(100, props.audioVolume)) : 50;
    this._unmutedVolume = this._volume > 0 ? this._volume : 50;
    this._blocked = false;
    /** @type {any} */
    this._style = { ...(props.style || {}) };
    /** @type {import("./widget.js").Widget|null} */
    this._widget = null;
    if (props.insertDefaultUI !== false) {
      this._widget = createWidget(target, {
        kind: "subscriber",
        insertMode: props.insertMode,
        width: props.width,
        height: props.height,
        name: props.showControls === false ? "" : stream.name,
        fitMode: props.fitMode ?? (stream.videoType === "screen" ? "contain" : "cover"),
        style: props.style,
      });
      this.element = this._widget.element;
      this.element.id ||= this.id;
      // OpenTok.js: the mute button sets the volume to 0, and back to the last one above 0.
      this._widget.onMuteToggle((muted) => this.setAudioVolume(muted ? 0 : this._unmutedVolume));
      this._widget.setMuted(this._volume === 0);
      // OpenTok.js: the audio-blocked indicator's click unblocks the audio.
      this._widget.onUnblockClick(() => this._unblock().catch((err) => log(2, "unblocking audio failed", err)));
    }
    /** @type {HTMLVideoElement} */
    this._video = this._widget ? this._widget.video : document.createElement("video");
    this._video.autoplay = true;
    this._video.playsInline = true;
    this._video.volume = this._volume / 100;
    this._video.addEventListener("resize", () => this._resized());
    this._dimensions = { width: 0, height: 0 };
    this._showVideoState();
    config.subscribers.add(this);

    this.subscribeToAudio = withPromise(this, async (/** @type {boolean} */ value) => {
      this._audioOn = Boolean(value);
      if (this._salon) await this._salon.subscribeToAudio(this._audioOn);
    }, "subscribeToAudio");
    this.subscribeToVideo = withPromise(this, async (/** @type {boolean} */ value) => {
      const was = this._videoOn && this.stream.hasVideo;
      this._videoOn = Boolean(value);
      if (this._salon) await this._salon.subscribeToVideo(this._videoOn);
      this._showVideoState();
      const now = this._videoOn && this.stream.hasVideo;
      if (was !== now) this.trigger(now ? "videoEnabled" : "videoDisabled", { reason: "subscribeToVideo" });
    }, "subscribeToVideo");
    /**
     * OpenTok.js: the largest video wanted, `{width, height}`, or null for none.
     * @param {{width: number, height: number}|null} resolution
     * @returns {Promise<void>}
     */
    this.setPreferredResolution = async (resolution) => {
      this._preferredResolution = otResolution(resolution);
      if (this._salon) await this._salon.setPreferredResolution(this._preferredResolution).catch(otFailure);
    };
    /**
     * OpenTok.js: the highest frame rate wanted, or null for none.
     * @param {number|null} frameRate
     * @returns {Promise<void>}
     */
    this.setPreferredFrameRate = async (frameRate) => {
      this._preferredFrameRate = otFrameRate(frameRate);
      if (this._salon) await this._salon.setPreferredFrameRate(this._preferredFrameRate).catch(otFailure);
    };
    this.setAudioVolume = withPromise(this, async (/** @type {number} */ value) => {
      this._volume = Math.max(0, Math.min(100, Number(value) || 0));
      if (this._volume > 0) this._unmutedVolume = this._volume;
      this._video.volume = this._volume / 100;
      this._widget?.setMuted(this._volume === 0);
    }, "setAudioVolume");
  }

  /**
   * Subscribe through the salon session; calls the completion handler either way.
   * @param {any} salonSession
   * @param {any} salonStream
   * @param {Function} [completionHandler]
   */
  async _start(salonSession, salonStream, completionHandler) {
    try {
      const sub = await salonSession.subscribe(salonStream, null, {
        subscribeToAudio: this._audioOn,
        subscribeToVideo: this._videoOn,
        insertDefaultUI: false,
        preferredResolution: this._preferredResolution,
        preferredFrameRate: this._preferredFrameRate,
      });
      if (this._destroyed) {
        salonSession.unsubscribe(sub).catch(() => {});
        return;
      }
      this._salon = sub;
      sub.on("audioLevelUpdated", (/** @type {any} */ e) => this._levels.set(e.audioLevel));
      // A steady level was sent before this subscription: start from it.
      const level = this.session?._lastLevels?.get(salonStream.streamId);
      if (level !== undefined) this._levels.set(level);
      sub.on("destroyed", (/** @type {any} */ e) => this._salonGone(e.reason));
      sub.on("videoDisabled", (/** @type {any} */ e) => this._serverVideo(false, e.reason));
      sub.on("videoEnabled", (/** @type {any} */ e) => this._serverVideo(true, e.reason));
      this._attach();
      this.trigger("videoElementCreated", { element: this._video });
      this.trigger("mediaStreamAvailable", { mediaStream: sub.mediaStream });
      done(completionHandler);
    } catch (err) {
      const error = toOTError(err, "subscribe");
      this._destroy("subscribeFailed", true);
      report(error, this, completionHandler);
    }
  }

  /** Play the received tracks (again, after a re-subscription). */
  _attach() {
    if (!this._salon) return;
    this._video.srcObject = this._salon.mediaStream;
    this._applySink();
    this._play();
  }

  _play() {
    this._video.play().then(
      () => {
        if (this._blocked) {
          this._blocked = false;
          this._widget?.setAudioBlocked(false);
          this.trigger("audioUnblocked");
        }
      },
      (err) => {
        // Autoplay with sound refused (no user gesture yet): play muted, say so, and let
        // OT.unblockAudio() (from a click) turn the sound on.
        if (err?.name !== "NotAllowedError" || this._blocked) return;
        this._blocked = true;
        this._video.muted = true;
        this._video.play().catch(() => {});
        this._widget?.setAudioBlocked(true);
        this.trigger("audioBlocked");
      },
    );
  }

  /** OT.unblockAudio(): play with sound again (call it from a user gesture). */
  async _unblock() {
    if (!this._blocked) return;
    this._video.muted = false;
    await this._video.play();
    this._blocked = false;
    this._widget?.setAudioBlocked(false);
    this.trigger("audioUnblocked");
  }

  _applySink() {
    const video = /** @type {any} */ (this._video);
    if (config.audioOutputDeviceId != null && typeof video.setSinkId === "function") {
      video.setSinkId(config.audioOutputDeviceId).catch((/** @type {any} */ err) => log(2, "setSinkId failed", err));
    }
  }

  _showVideoState() {
    this._widget?.setVideoOff(!(this._videoOn && this.stream.hasVideo) || this._qualityOff);
  }

  /**
   * The server stopped (or resumed) the video on its own: OpenTok.js's videoDisabled /
   * videoEnabled with its reason (quality: this link cannot carry the video).
   * @param {boolean} on
   * @param {string} reason
   */
  _serverVideo(on, reason) {
    if (reason === "quality") this._qualityOff = !on;
    this._showVideoState();
    this.trigger(on ? "videoEnabled" : "videoDisabled", { reason });
  }

  /** The stream's hasVideo changed: OpenTok.js's videoDisabled / videoEnabled (publishVideo). */
  _streamVideoChanged() {
    this._showVideoState();
    if (!this._videoOn) return;
    this.trigger(this.stream.hasVideo ? "videoEnabled" : "videoDisabled", { reason: "publishVideo" });
    if (this.stream.hasVideo) setTimeout(() => this._attach(), 0); // a re-subscription may add the track
  }

  /**
   * The salon subscriber ended (its stream went, or the session ended): the session's
   * streamDestroyed / sessionDisconnected event runs first and may keep the element.
   * @param {string} reason
   */
  _salonGone(reason) {
    if (reason === "unsubscribed") return;
    queueMicrotask(() => {
      if (!this._keep) this._destroy(reason);
    });
  }

  /**
   * @param {string} reason
   * @param {boolean} [quiet] no destroyed event (a subscription that never started)
   */
  _destroy(reason, quiet = false) {
    if (this._destroyed) return;
    this._destroyed = true;
    this._levels.stop();
    config.subscribers.delete(this);
    this.session?._subscriberGone(this);
    this._widget?.destroy();
    this._video.srcObject = null;
    if (!quiet) this.trigger("destroyed", { reason });
  }

  getAudioVolume() {
    return this._volume;
  }

  /** @returns {string|null} */
  getImgData() {
    return imageData(this._video);
  }

  /** @param {Function} [callback] */
  async getStats(callback) {
    try {
      if (!this._salon) throw new OTError("OT_NOT_CONNECTED", "the subscriber is not subscribed", 1010);
      const stats = subscriberStats(await this._salon.getStats());
      done(callback, stats);
      return stats;
    } catch (err) {
      const error = toOTError(err, "other");
      if (typeof callback === "function") callback(error);
      throw error;
    }
  }

  async getRtcStatsReport() {
    if (!this._salon) throw new OTError("OT_PEER_CONNECTION_NOT_CONNECTED", "the subscriber is not subscribed", 1015);
    return this._salon.getStats();
  }

  getStyle() {
    return this._widget ? this._widget.getStyle() : { ...this._style };
  }

  /**
   * @param {string|Record<string, any>} style
   * @param {any} [value]
   */
  setStyle(style, value) {
    const changes = typeof style === "string" ? { [style]: value } : style;
    Object.assign(this._style, changes);
    this._widget?.setStyle(changes);
    return this;
  }

  isAudioBlocked() {
    return this._blocked;
  }

  /** @returns {number|undefined} */
  videoWidth() {
    return this._video.videoWidth || undefined;
  }

  /** @returns {number|undefined} */
  videoHeight() {
    return this._video.videoHeight || undefined;
  }

  _resized() {
    const newValue = { width: this._video.videoWidth, height: this._video.videoHeight };
    const oldValue = this._dimensions;
    this._dimensions = newValue;
    if (oldValue.width && (oldValue.width !== newValue.width || oldValue.height !== newValue.height)) {
      this.trigger("videoDimensionsChanged", { oldValue, newValue });
    }
  }
}

/** The largest preferred width or height, and frame rate, the server takes. */
const MAX_DIMENSION = 16384;
const MAX_FRAME_RATE = 240;

/**
 * OpenTok.js's preferred resolution as salon takes it: null (none), or `{width, height}` of
 * positive numbers, rounded and capped at 16384; anything else is OT_INVALID_PARAMETER.
 * @param {any} resolution
 * @returns {{width: number, height: number}|null}
 */
function otResolution(resolution) {
  if (resolution === null || resolution === undefined) return null;
  const side = (/** @type {any} */ v) => (typeof v === "number" && Number.isFinite(v) && v > 0 ? Math.min(MAX_DIMENSION, Math.max(1, Math.round(v))) : 0);
  const width = side(resolution?.width);
  const height = side(resolution?.height);
  if (!width || !height) {
    throw new OTError("OT_INVALID_PARAMETER", "a preferred resolution is {width, height}, both positive numbers, or null", 1011);
  }
  return { width, height };
}

/**
 * OpenTok.js's preferred frame rate as salon takes it: null (none), or a positive number
 * capped at 240; anything else is OT_INVALID_PARAMETER.
 * @param {any} frameRate
 * @returns {number|null}
 */
function otFrameRate(frameRate) {
  if (frameRate === null || frameRate === undefined) return null;
  if (typeof frameRate !== "number" || !Number.isFinite(frameRate) || frameRate <= 0) {
    throw new OTError("OT_INVALID_PARAMETER", "a preferred frame rate is a positive number, or null", 1011);
  }
  return Math.min(MAX_FRAME_RATE, frameRate);
}

/**
 * A refused preference, as OpenTok.js reports failures.
 * @param {any} err
 * @returns {never}
 */
function otFailure(err) {
  throw toOTError(err, "other");
}
