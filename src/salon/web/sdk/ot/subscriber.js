// OT.Subscriber: a remote stream, rendered with OpenTok.js's default UI, on top of the salon
// SDK's Subscriber (one receiving peer connection per session).
import { EventEmitter } from "./events.js";
import { OTError, toOTError, report, done } from "./errors.js";
import { createWidget } from "./widget.js";
import { subscriberStats, imageData } from "./stats.js";
import { config, log } from "./config.js";
import { widgetId, withPromise } from "./publisher.js";

/**
 * Returned by `session.subscribe(stream, target, properties, completionHandler)` at once; the
 * media follows. Events: audioBlocked, audioUnblocked, audioLevelUpdated, connected,
 * disconnected, destroyed, mediaStreamAvailable, videoDimensionsChanged, videoDisabled,
 * videoEnabled (reasons publishVideo, subscribeToVideo), videoElementCreated.
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
    /** set when a cancelled streamDestroyed / sessionDisconnected keeps the element */
    this._keep = false;
    this._audioOn = props.subscribeToAudio !== false;
    this._videoOn = props.subscribeToVideo !== false;
    this._volume = typeof props.audioVolume === "number" ? Math.max(0, Math.min(100, props.audioVolume)) : 50;
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
        fitMode: props.fitMode,
        style: props.style,
      });
      this.element = this._widget.element;
      this.element.id ||= this.id;
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
    this.setAudioVolume = withPromise(this, async (/** @type {number} */ value) => {
      this._volume = Math.max(0, Math.min(100, Number(value) || 0));
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
      });
      if (this._destroyed) {
        salonSession.unsubscribe(sub).catch(() => {});
        return;
      }
      this._salon = sub;
      sub.on("audioLevelUpdated", (/** @type {any} */ e) => {
        this._widget?.setAudioLevel(e.audioLevel);
        this.trigger("audioLevelUpdated", { audioLevel: e.audioLevel });
      });
      sub.on("destroyed", (/** @type {any} */ e) => this._salonGone(e.reason));
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
    this.trigger("audioUnblocked");
  }

  _applySink() {
    const video = /** @type {any} */ (this._video);
    if (config.audioOutputDeviceId != null && typeof video.setSinkId === "function") {
      video.setSinkId(config.audioOutputDeviceId).catch((/** @type {any} */ err) => log(2, "setSinkId failed", err));
    }
  }

  _showVideoState() {
    this._widget?.setVideoOff(!(this._videoOn && this.stream.hasVideo));
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
