// OT.Publisher: a local camera/microphone (or screen) with OpenTok.js's properties, methods and
// events, on top of the salon SDK's Publisher (which opens the devices and publishes).
import { Publisher as SalonPublisher } from "../salon.js";
import { EventEmitter } from "./events.js";
import { OTError, toOTError, report, done } from "./errors.js";
import { createWidget } from "./widget.js";
import { openMedia, isScreen, isOff, listDevices, willPrompt } from "./media.js";
import { publisherStats, imageData } from "./stats.js";
import { log } from "./config.js";
import { LevelRepeater } from "./levels.js";

let nextId = 1;

/** @returns {string} an element-id-like identifier, as OpenTok.js gives its widgets */
export function widgetId() {
  return `OT_${Date.now().toString(36)}${(nextId++).toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A function with OpenTok.js's `.promise` variant: `fn(…)` returns `self` (errors go to the
 * callback or the log), `fn.promise(…)` returns the promise.
 * @template {any[]} A
 * @param {any} self
 * @param {(...args: A) => Promise<any>} run
 * @param {string} what for the log
 */
export function withPromise(self, run, what) {
  const call = (/** @type {A} */ ...args) => {
    run(...args).catch((err) => log(1, `${what} failed`, err));
    return self;
  };
  return Object.assign(call, { promise: run });
}

/**
 * Create with `OT.initPublisher(target, properties, completionHandler)`.
 * Events: accessAllowed, accessDenied, accessDialogOpened, accessDialogClosed,
 * audioInputDeviceChanged, audioLevelUpdated, destroyed, mediaStopped, mediaStreamAvailable,
 * muteForced, streamCreated, streamDestroyed, videoDimensionsChanged, videoElementCreated.
 */
export class Publisher extends EventEmitter {
  /**
   * @param {HTMLElement|string|null|undefined} target
   * @param {any} properties OpenTok.js's PublisherProperties
   * @param {Function} [completionHandler]
   */
  constructor(target, properties, completionHandler) {
    super();
    const props = { ...(properties || {}) };
    this._props = props;
    this.id = widgetId();
    this.accessAllowed = false;
    /** @type {HTMLElement|undefined} */
    this.element = undefined;
    /** @type {import("./session.js").Stream|undefined} */
    this.stream = undefined;
    /** @type {any} the OT.Session it publishes to */
    this.session = undefined;
    this._destroyed = false;
    this._levels = new LevelRepeater((level) => {
      this._widget?.setAudioLevel(level);
      this.trigger("audioLevelUpdated", { audioLevel: level });
    });
    this._screen = isScreen(props.videoSource);
    /** @type {any} */
    this._style = { ...(props.style || {}) };
    const name = props.name == null ? "" : String(props.name);
    /** @type {import("./widget.js").Widget|null} */
    this._widget = null;
    if (props.insertDefaultUI !== false) {
      this._widget = createWidget(target, {
        kind: "publisher",
        insertMode: props.insertMode,
        width: props.width,
        height: props.height,
        name: props.showControls === false ? "" : name,
        mirror: props.mirror ?? !this._screen,
        fitMode: props.fitMode ?? (this._screen ? "contain" : "cover"),
        style: props.style,
      });
      this.element = this._widget.element;
      this.element.id ||= this.id;
      this._widget.setVideoOff(props.publishVideo === false || isOff(props.videoSource));
      this._widget.setMuted(props.publishAudio === false);
      this._widget.onMuteToggle((muted) => this.publishAudio(!muted));
    }
    /** @type {HTMLVideoElement} */
    this._video = this._widget ? this._widget.video : document.createElement("video");
    this._video.muted = true;
    this._video.autoplay = true;
    this._video.playsInline = true;
    this._video.addEventListener("resize", () => this._resized());
    this._dimensions = { width: 0, height: 0 };
    /** setMaxVideoBitrate's bits per second (0: none), or setVideoBitratePreset's preset */
    this._maxBitrate = 0;
    /** @type {"default"|"bw_saver"|"extra_bw_saver"|"custom"} */
    this._bitratePreset = "default";
    /** @type {(number|undefined)[]|null} the sender's per-layer maxBitrate before any cap */
    this._layerBitrates = null;

    const codecs = Array.isArray(props.preferredVideoCodecs) ? props.preferredVideoCodecs : [];
    const codec = codecs.map((/** @type {string} */ c) => c.toUpperCase()).find((/** @type {string} */ c) => c === "VP8" || c === "H264");
    this._salon = new SalonPublisher(null, {
      name,
      audio: !isOff(props.audioSource),
      video: !isOff(props.videoSource),
      videoSource: this._screen ? "screen" : "camera",
      resolution: props.resolution,
      frameRate: props.frameRate,
      videoCodec: /** @type {any} */ (codec),
      simulcast: props.simulcast !== false,
      insertDefaultUI: false,
      publishAudio: props.publishAudio !== false,
      publishVideo: props.publishVideo !== false,
      media: () => this._open(),
    });
    const s = this._salon;
    s.on("accessAllowed", () => {
      if (this._destroyed) return;
      this.accessAllowed = true;
      this._video.srcObject = s.mediaStream;
      this._video.play?.().catch(() => {});
      this.trigger("accessAllowed");
      this.trigger("mediaStreamAvailable", { mediaStream: s.mediaStream });
      this.trigger("videoElementCreated", { element: this._video });
      done(completionHandler);
    });
    s.on("accessDenied", ({ error }) => {
      const otError = toOTError(error, "publish");
      this.trigger("accessDenied", { message: otError.message, name: otError.name, code: otError.code });
      report(otError, this, completionHandler);
    });
    s.on("mediaStopped", ({ track }) => {
      const event = this.trigger("mediaStopped", { track }, true);
      // OpenTok.js: a publisher whose media ended (e.g. screen sharing stopped) is destroyed.
      if (!event.isDefaultPrevented()) this.destroy();
    });
    s.on("muteForced", () => {
      this._widget?.setMuted(true);
      this.trigger("muteForced");
    });
    s.on("streamCreated", () => {
      this.session?._publisherStreamCreated(this);
      this._applyBitrate().catch((err) => log(2, "could not apply the maximum video bitrate", err));
    });
    s.on("streamDestroyed", ({ reason }) => this._streamEnded(reason || "networkDisconnected"));

    this.publishAudio = withPromise(this, async (/** @type {boolean} */ value) => {
      this._widget?.setMuted(!value);
      await this._salon.publishAudio(Boolean(value));
    }, "publishAudio");
    const publishVideo = withPromise(this, async (/** @type {boolean} */ value) => {
      this._widget?.setVideoOff(!value);
      await this._salon.publishVideo(Boolean(value));
    }, "publishVideo");
    /** @type {((value: boolean, callback?: Function) => Publisher) & {promise: (value: boolean) => Promise<void>}} */
    this.publishVideo = Object.assign(
      (/** @type {boolean} */ value, /** @type {Function|undefined} */ callback) => {
        publishVideo.promise(value).then(
          () => done(callback),
          (err) => (typeof callback === "function" ? callback(toOTError(err, "other")) : log(1, "publishVideo failed", err)),
        );
        return this;
      },
      { promise: publishVideo.promise },
    );
    this.destroy = withPromise(this, () => this._destroy("destroyed"), "destroy");
  }

  /** Open the devices, with accessDialogOpened / accessDialogClosed around a permission prompt. */
  async _open() {
    const props = this._props;
    const prompt = !this._screen && (await willPrompt(!isOff(props.audioSource), !isOff(props.videoSource)));
    if (prompt) this.trigger("accessDialogOpened", {}, true);
    try {
      return await openMedia(props);
    } finally {
      if (prompt) this.trigger("accessDialogClosed");
    }
  }

  /** The publisher's stream ended (unpublished, force-unpublished, disconnected). @param {string} reason */
  _streamEnded(reason) {
    this._levels.stop();
    const stream = this.stream;
    const session = this.session;
    this.stream = undefined;
    this.session = undefined;
    session?._publisherGone(this, stream);
    if (this._destroyed) return;
    const event = this.trigger("streamDestroyed", { stream, reason }, true);
    // OpenTok.js: unless prevented, the publisher is destroyed with its stream.
    if (!event.isDefaultPrevented()) this._destroy(reason);
  }

  /** @param {string} reason */
  async _destroy(reason) {
    if (this._destroyed) return;
    this._destroyed = true;
    this._levels.stop();
    const session = this.session;
    if (session && this.stream) {
      try {
        await session._unpublish(this, true);
      } catch {
        // gone already
      }
    }
    await this._salon.destroy();
    // Destroyed while the devices were still opening: close them when they are open.
    this._salon.ready.then((media) => media.getTracks().forEach((t) => t.stop()), () => {});
    this._widget?.destroy();
    this._video.srcObject = null;
    this.trigger("destroyed", { reason });
  }

  /** @returns {string|null} the current video frame as a base64 PNG */
  getImgData() {
    return imageData(this._video);
  }

  /**
   * OpenTok.js's publisher stats: one entry (salon routes every stream through the server).
   * @param {Function} [callback]
   */
  async getStats(callback) {
    try {
      const pc = this._salon.pc;
      if (!pc) throw new OTError("OT_NOT_CONNECTED", "the publisher is not publishing", 1010);
      const stats = [{ stats: publisherStats(await pc.getStats()) }];
      done(callback, stats);
      return stats;
    } catch (err) {
      if (typeof callback === "function") callback(toOTError(err, "other"));
      throw toOTError(err, "other");
    }
  }

  async getRtcStatsReport() {
    const pc = this._salon.pc;
    if (!pc) throw new OTError("OT_PEER_CONNECTION_NOT_CONNECTED", "the publisher is not publishing", 1015);
    return [{ rtcStatsReport: await pc.getStats() }];
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

  /** Switch to the next camera. @returns {Promise<{deviceId: string}>} */
  async cycleVideo() {
    const cameras = (await listDevices()).filter((d) => d.kind === "videoInput");
    const current = this._salon.videoTrack?.getSettings().deviceId;
    if (!cameras.length || this._screen) throw new OTError("OT_UNABLE_TO_CAPTURE_MEDIA", "no other camera to cycle to", 1500);
    const index = cameras.findIndex((d) => d.deviceId === current);
    const next = cameras[(index + 1) % cameras.length];
    await this.setVideoSource(next.deviceId);
    return { deviceId: next.deviceId };
  }

  /** @param {string|MediaStreamTrack} source a microphone's device ID, or an audio track */
  async setAudioSource(source) {
    if (!this._salon.audioTrack) throw new OTError("OT_NOT_SUPPORTED", "this publisher has no audio", 1500);
    let track;
    if (source instanceof MediaStreamTrack) track = source;
    else if (typeof source === "string") {
      const media = await navigator.mediaDevices.getUserMedia({ audio: { deviceId: { exact: source } } });
      track = media.getAudioTracks()[0];
    } else throw new OTError("OT_INVALID_PARAMETER", "setAudioSource needs a device ID or a MediaStreamTrack", 1011);
    await this._salon.replaceTrack(track);
    this.trigger("audioInputDeviceChanged", { device: { deviceId: track.getSettings().deviceId, label: track.label } });
    return undefined;
  }

  getAudioSource() {
    return this._salon.audioTrack;
  }

  /** @param {string|MediaStreamTrack} source a camera's device ID, or a video track */
  async setVideoSource(source) {
    if (this._screen || !this._salon.videoTrack) {
      throw new OTError("OT_SET_VIDEO_SOURCE_FAILURE", "setVideoSource works on a publisher that uses a camera", 1040);
    }
    let track;
    if (source instanceof MediaStreamTrack) track = source;
    else if (typeof source === "string") {
      try {
        const settings = this._salon.videoTrack.getSettings();
        const media = await navigator.mediaDevices.getUserMedia({
          video: { deviceId: { exact: source }, width: { ideal: settings.width }, height: { ideal: settings.height } },
        });
        track = media.getVideoTracks()[0];
      } catch (err) {
        throw new OTError("OT_INVALID_VIDEO_SOURCE", `no camera with the device ID ${source}: ${err}`, 1041);
      }
    } else throw new OTError("OT_INVALID_VIDEO_SOURCE", "setVideoSource needs a device ID", 1041);
    await this._salon.replaceTrack(track);
    this._video.srcObject = this._salon.mediaStream;
    return undefined;
  }

  /** @returns {{deviceId: string|null, type: string|null, track: MediaStreamTrack|null}} */
  getVideoSource() {
    const track = this._salon.videoTrack;
    const custom = this._props.videoSource instanceof MediaStreamTrack;
    return {
      deviceId: track && !this._screen && !custom ? track.getSettings().deviceId || null : null,
      type: track ? (this._screen ? "screen" : custom ? "custom" : "camera") : null,
      track,
    };
  }

  /** @returns {"text"|"detail"|"motion"|""} */
  getVideoContentHint() {
    return /** @type {any} */ (this._salon.videoTrack?.contentHint || "");
  }

  /** @param {"text"|"detail"|"motion"|""} hint */
  async setVideoContentHint(hint) {
    const track = this._salon.videoTrack;
    if (track) track.contentHint = hint;
  }

  /**
   * Cap the video bitrate (bits per second, 5 000 to 10 000 000; 0 removes the cap), on the
   * sender: no renegotiation, kept across republishing.
   * @param {number} bitrateBps
   */
  async setMaxVideoBitrate(bitrateBps) {
    const bitrate = typeof bitrateBps === "number" ? Math.trunc(bitrateBps) : NaN;
    if (Number.isNaN(bitrate) || (bitrate !== 0 && (bitrate < 5000 || bitrate > 10_000_000))) {
      throw new OTError("OT_INVALID_PARAMETER", "Invalid bitrate: it must be 0 or any number between 5000 and 10000000", 1011);
    }
    this._maxBitrate = bitrate;
    this._bitratePreset = bitrate === 0 ? "default" : "custom";
    await this._applyBitrate();
  }

  /**
   * OpenTok.js's presets: "default" (no cap), "bw_saver", "extra_bw_saver" (caps by resolution,
   * OpenTok.js's table for one encoding).
   * @param {string} preset
   */
  async setVideoBitratePreset(preset) {
    const name = typeof preset === "string" ? preset.toLowerCase() : "";
    if (name !== "default" && name !== "bw_saver" && name !== "extra_bw_saver") {
      throw new OTError("OT_INVALID_PARAMETER", 'Invalid preset. It must be either "default", "bw_saver", or "extra_bw_saver"', 1011);
    }
    this._bitratePreset = name;
    this._maxBitrate = 0;
    await this._applyBitrate();
  }

  /** @returns {number} the cap set with setMaxVideoBitrate, 0 for none */
  getMaxVideoBitrate() {
    return this._maxBitrate;
  }

  /** @returns {"default"|"bw_saver"|"extra_bw_saver"|"custom"} */
  getVideoBitratePreset() {
    return this._bitratePreset;
  }

  /** The cap in force, in bits per second (null: none). @returns {number|null} */
  _bitrateCap() {
    if (this._bitratePreset === "custom") return this._maxBitrate;
    if (this._bitratePreset === "default") return null;
    // OpenTok.js's singleEncodingBitrateTable, by the nearest resolution class.
    const pixels = (this.videoWidth() || 640) * (this.videoHeight() || 480);
    const size = pixels >= 1920 * 1080 * 0.9 ? "FHD" : pixels >= 1280 * 720 * 0.9 ? "HD" : pixels >= 960 * 540 * 0.9 ? "qHD" : "VGA";
    /** @type {Record<string, [number, number]>} [bw_saver, extra_bw_saver] */
    const table = { FHD: [1_000_000, 300_000], HD: [800_000, 250_000], qHD: [600_000, 150_000], VGA: [450_000, 100_000] };
    return table[size][this._bitratePreset === "bw_saver" ? 0 : 1];
  }

  /** Put the cap on the video sender, if publishing. */
  async _applyBitrate() {
    const track = this._salon.videoTrack;
    const sender = this._salon.pc?.getSenders().find((x) => x.track === track && track);
    if (!sender) return;
    const params = sender.getParameters();
    const encodings = params.encodings;
    if (!encodings?.length) return;
    const cap = this._bitrateCap();
    // The SDK's own per-layer caps, restored when the cap goes.
    if (!this._layerBitrates || this._layerBitrates.length !== encodings.length) {
      this._layerBitrates = encodings.map((e) => e.maxBitrate);
    }
    if (cap == null) {
      encodings.forEach((encoding, i) => {
        encoding.active = true;
        const own = this._layerBitrates?.[i];
        if (own == null) delete encoding.maxBitrate;
        else encoding.maxBitrate = own;
      });
    } else {
      // Simulcast: the cap is for all layers together, shared by pixel count; the lowest
      // layers stop when their share would be under 50 kbit/s (too little to be of use).
      const weights = encodings.map((e) => 1 / (e.scaleResolutionDownBy || 1) ** 2);
      let first = 0;
      const share = (/** @type {number} */ i) => (cap * weights[i]) / weights.slice(first).reduce((a, b) => a + b, 0);
      while (first < encodings.length - 1 && share(first) < 50_000) first++;
      encodings.forEach((encoding, i) => {
        encoding.active = i >= first;
        if (i >= first) encoding.maxBitrate = Math.floor(share(i));
      });
    }
    await sender.setParameters(params);
  }

  /** @returns {number|undefined} */
  videoWidth() {
    return this._video.videoWidth || this._salon.videoTrack?.getSettings().width;
  }

  /** @returns {number|undefined} */
  videoHeight() {
    return this._video.videoHeight || this._salon.videoTrack?.getSettings().height;
  }

  _resized() {
    const newValue = { width: this._video.videoWidth, height: this._video.videoHeight };
    const oldValue = this._dimensions;
    this._dimensions = newValue;
    if (oldValue.width && (oldValue.width !== newValue.width || oldValue.height !== newValue.height)) {
      this.trigger("videoDimensionsChanged", { oldValue, newValue });
    }
  }

  /** @param {number} level */
  _audioLevel(level) {
    this._levels.set(level);
  }
}
