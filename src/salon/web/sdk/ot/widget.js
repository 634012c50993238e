// The default UI of the OpenTok.js-compatible layer: the widget OpenTok users know, one per
// publisher and subscriber. It is DOM only: the OT layer (opentok.js) puts the media into
// `video`, calls the setters as its state changes and acts on the mute button's callback.
//
//   const widget = createWidget("publisher", {kind: "publisher", insertMode: "append",
//                                            width: "100%", height: "100%", name: "Alice"});
//   widget.video.srcObject = mediaStream;
//   widget.onMuteToggle((muted) => publisher.publishAudio(!muted));
//
// The markup and class names are OpenTok.js's, so an app's CSS for them keeps working:
//
//   <div class="OT_publisher OT_mirrored OT_fit-mode-cover" style="width:264px;height:198px">
//     <div class="OT_name OT_edge-bar-item OT_mode-auto">Alice</div>
//     <button class="OT_edge-bar-item OT_mute OT_mode-auto"></button>
//     <div class="OT_audio-level-meter OT_mode-auto">…</div>
//     <div class="OT_widget-container">
//       <video class="OT_video-element"></video>
//       <div class="OT_video-poster"></div>
//     </div>
//   </div>
//
// Placement (`insertMode`), as OpenTok.js does it: "replace" (the default) makes the target
// element itself the widget, emptied of its children and keeping its id and classes (so
// `#publisher { … }` still styles it); "append", "before" and "after" put a new element
// inside, before or after the target. With no target, or an id that names no element, a new
// element is appended to <body>. `destroy()` removes the widget's element from the page (for
// "replace" that is the former target, as in OpenTok.js).

/** @typedef {"auto"|"on"|"off"} DisplayMode */
/**
 * @typedef {object} WidgetStyle OpenTok.js's `style` property of a publisher or subscriber.
 * @property {DisplayMode} [nameDisplayMode] the name bar: on hover ("auto", the default), always, never
 * @property {DisplayMode} [buttonDisplayMode] the mute button: on hover ("auto"), always, never
 * @property {DisplayMode} [audioLevelDisplayMode] the audio-level meter: while the video is off
 *   ("auto"), always, never
 * @property {string|null} [backgroundImageURI] the poster shown while the video is off (default:
 *   a silhouette); "" or null for none
 */
/**
 * @typedef {object} WidgetOptions
 * @property {"replace"|"after"|"before"|"append"} [insertMode] where the widget goes relative to
 *   the target (default "replace")
 * @property {number|string} [width] a number of pixels, or a CSS length ("100%", "20em"); default 264
 * @property {number|string} [height] likewise; default 198
 * @property {string} [name] shown in the name bar (no bar when empty)
 * @property {boolean} [mirror] flip the video horizontally (default: true for a publisher)
 * @property {"cover"|"contain"} [fitMode] how the video fills the widget (default "cover")
 * @property {WidgetStyle} [style]
 * @property {"publisher"|"subscriber"} [kind] default "publisher"
 */
/**
 * @typedef {object} Widget
 * @property {HTMLElement} element the widget's root element (OT_publisher / OT_subscriber)
 * @property {HTMLVideoElement} video where the media plays (a publisher's is muted: no echo)
 * @property {(name: string) => void} setName
 * @property {(level: number) => void} setAudioLevel show an audio level from 0 to 1
 * @property {(off: boolean) => void} setVideoOff show the poster instead of the video
 * @property {(callback: (muted: boolean) => void) => void} onMuteToggle called with the new
 *   state when the user clicks the mute button (the widget already shows it)
 * @property {(muted: boolean) => void} setMuted show the mute state (a subscriber's widget
 *   also mutes its video element's playback)
 * @property {(style: WidgetStyle) => void} setStyle change some of the style options
 * @property {() => Required<WidgetStyle>} getStyle the style options in force
 * @property {() => void} destroy stop the video and remove the element from the page
 */

/** OpenTok.js's default widget size. */
export const DEFAULT_WIDTH = 264;
export const DEFAULT_HEIGHT = 198;

const INSERT_MODES = ["replace", "after", "before", "append"];
const DISPLAY_MODES = ["auto", "on", "off"];
const STYLE_ID = "OT_widget-styles";

// A person's silhouette, the poster when the video is off and no backgroundImageURI is given.
const SILHOUETTE =
  "data:image/svg+xml," +
  encodeURIComponent(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">' +
      '<circle cx="50" cy="38" r="18" fill="#8a8a8a"/>' +
      '<path d="M16 92c0-20 15-32 34-32s34 12 34 32z" fill="#8a8a8a"/></svg>',
  );
const SPEAKER =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="white" stroke-width="2">' +
  '<path d="M4 9h4l5-4v14l-5-4H4z" fill="white"/>';
const UNMUTED_ICON = "data:image/svg+xml," + encodeURIComponent(SPEAKER + '<path d="M16 8.5a5 5 0 0 1 0 7"/></svg>');
const MUTED_ICON = "data:image/svg+xml," + encodeURIComponent(SPEAKER + '<path d="M16 9l6 6M22 9l-6 6"/></svg>');

// Before the app's own stylesheets (first in <head>), so that its rules for the same classes win.
const CSS = `
.OT_publisher, .OT_subscriber {
  position: relative; overflow: hidden; box-sizing: border-box; display: block;
  background-color: #000; color: #fff; font-family: sans-serif; font-size: 14px;
}
.OT_publisher .OT_widget-container, .OT_subscriber .OT_widget-container {
  position: absolute; inset: 0; overflow: hidden; background-color: #000;
}
.OT_publisher .OT_video-element, .OT_subscriber .OT_video-element {
  position: absolute; inset: 0; width: 100%; height: 100%; display: block; object-fit: cover;
}
.OT_fit-mode-contain .OT_video-element { object-fit: contain; }
.OT_mirrored .OT_video-element { transform: scaleX(-1); }
.OT_video-poster {
  position: absolute; inset: 0; display: none;
  background: #1f1f1f center / contain no-repeat;
}
.OT_audio-only .OT_video-poster { display: block; }
.OT_audio-only .OT_video-element { visibility: hidden; }
.OT_name {
  position: absolute; top: 0; left: 0; right: 0; z-index: 2; margin: 0;
  padding: 4px 36px 4px 8px; line-height: 20px; background: rgba(0, 0, 0, 0.55);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
}
.OT_mute {
  position: absolute; top: 0; right: 0; z-index: 3; width: 28px; height: 28px;
  margin: 0; padding: 0; border: 0; cursor: pointer;
  background: rgba(0, 0, 0, 0.55) url("${UNMUTED_ICON}") center / 18px no-repeat;
}
.OT_mute.OT_active { background-image: url("${MUTED_ICON}"); }
.OT_audio-level-meter {
  position: absolute; right: 0; bottom: 0; z-index: 2; width: 44px; height: 44px; pointer-events: none;
}
.OT_audio-level-meter__value {
  position: absolute; inset: 6px; border-radius: 50%; background: rgba(120, 220, 120, 0.8);
  transform: scale(var(--OT-audio-level, 0)); transition: transform 0.1s linear;
}
.OT_publisher .OT_mode-off, .OT_subscriber .OT_mode-off, .OT_widget-hidden { display: none !important; }
.OT_edge-bar-item.OT_mode-auto { opacity: 0; transition: opacity 0.2s; }
.OT_publisher:hover .OT_edge-bar-item.OT_mode-auto, .OT_subscriber:hover .OT_edge-bar-item.OT_mode-auto,
.OT_edge-bar-item.OT_mode-auto:focus-visible, .OT_edge-bar-item.OT_mode-on { opacity: 1; }
.OT_audio-level-meter.OT_mode-auto { display: none; }
.OT_audio-only .OT_audio-level-meter.OT_mode-auto { display: block; }
`;

let widgetCount = 0;

/** Add the widget stylesheet to the document once. */
function installStyles() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.insertBefore(style, document.head.firstChild);
}

/**
 * A CSS length from OpenTok's width/height: a number is pixels, a string is used as given.
 * @param {number|string|undefined|null} value
 * @param {number} fallback
 * @returns {string}
 */
function cssLength(value, fallback) {
  if (typeof value === "number" && Number.isFinite(value)) return `${value}px`;
  if (typeof value === "string" && value.trim() !== "") {
    return /^\d+(\.\d+)?$/.test(value.trim()) ? `${value.trim()}px` : value;
  }
  return `${fallback}px`;
}

/**
 * @param {unknown} value
 * @param {DisplayMode} fallback
 * @returns {DisplayMode}
 */
function displayMode(value, fallback) {
  if (value === true) return "on";
  if (value === false) return "off";
  return typeof value === "string" && DISPLAY_MODES.includes(value) ? /** @type {DisplayMode} */ (value) : fallback;
}

/**
 * The element the widget becomes or is placed against (see the header).
 * @param {HTMLElement|string|null|undefined} target
 * @param {string} insertMode
 * @returns {HTMLElement}
 */
function placeRoot(target, insertMode) {
  /** @type {HTMLElement|null} */
  let anchor = null;
  if (typeof target === "string") anchor = document.getElementById(target);
  else if (target instanceof HTMLElement) anchor = target;
  else if (target != null) throw new TypeError("the target element must be an element, an element's id or undefined");
  if (!INSERT_MODES.includes(insertMode)) {
    throw new TypeError(`insertMode must be one of ${INSERT_MODES.join(", ")}, not ${JSON.stringify(insertMode)}`);
  }
  if (anchor && insertMode === "replace") {
    anchor.replaceChildren();
    if (!anchor.id) anchor.id = `OT_${++widgetCount}_${Date.now().toString(36)}`;
    return anchor;
  }
  const root = document.createElement("div");
  root.id = `OT_${++widgetCount}_${Date.now().toString(36)}`;
  if (!anchor) document.body.appendChild(root);
  else if (insertMode === "append") anchor.appendChild(root);
  else if (!anchor.parentNode) throw new TypeError(`insertMode ${insertMode} needs a target element with a parent`);
  else if (insertMode === "before") anchor.parentNode.insertBefore(root, anchor);
  else anchor.parentNode.insertBefore(root, anchor.nextSibling);
  return root;
}

/**
 * Create the default UI of a publisher or subscriber and place it in the page.
 * @param {HTMLElement|string|null|undefined} target an element, an element's id, or nothing
 *   (a new element at the end of <body>)
 * @param {WidgetOptions} [options]
 * @returns {Widget}
 */
export function createWidget(target, options = {}) {
  const kind = options.kind === "subscriber" ? "subscriber" : "publisher";
  installStyles();
  const root = placeRoot(target, options.insertMode ?? "replace");
  root.classList.add(kind === "publisher" ? "OT_publisher" : "OT_subscriber", "OT_loading");
  root.classList.add(options.fitMode === "contain" ? "OT_fit-mode-contain" : "OT_fit-mode-cover");
  if (options.mirror ?? kind === "publisher") root.classList.add("OT_mirrored");
  root.style.width = cssLength(options.width, DEFAULT_WIDTH);
  root.style.height = cssLength(options.height, DEFAULT_HEIGHT);

  const nameBar = document.createElement("div");
  nameBar.className = "OT_name OT_edge-bar-item";
  const muteButton = document.createElement("button");
  muteButton.type = "button";
  muteButton.className = "OT_edge-bar-item OT_mute";
  const meter = document.createElement("div");
  meter.className = "OT_audio-level-meter";
  meter.setAttribute("aria-hidden", "true");
  const meterBar = document.createElement("div");
  meterBar.className = "OT_audio-level-meter__bar";
  const meterValue = document.createElement("div");
  meterValue.className = "OT_audio-level-meter__value";
  meter.append(meterBar, meterValue);
  const container = document.createElement("div");
  container.className = "OT_widget-container";
  const video = document.createElement("video");
  video.className = "OT_video-element";
  video.autoplay = true;
  video.playsInline = true;
  // A publisher never plays its own microphone back (echo); a subscriber's plays unless muted.
  video.muted = kind === "publisher";
  const poster = document.createElement("div");
  poster.className = "OT_video-poster";
  container.append(video, poster);
  root.append(nameBar, muteButton, meter, container);

  const onData = () => root.classList.remove("OT_loading");
  video.addEventListener("loadeddata", onData);

  /** @type {Required<WidgetStyle>} */
  const style = {
    nameDisplayMode: "auto",
    buttonDisplayMode: "auto",
    audioLevelDisplayMode: "auto",
    backgroundImageURI: SILHOUETTE,
  };
  let name = "";
  let muted = false;
  /** @type {((muted: boolean) => void)[]} */
  const muteCallbacks = [];

  /**
   * @param {HTMLElement} element
   * @param {DisplayMode} mode
   */
  const applyMode = (element, mode) => {
    element.classList.remove("OT_mode-auto", "OT_mode-on", "OT_mode-off");
    element.classList.add(`OT_mode-${mode}`);
  };
  /** @param {WidgetStyle} changes */
  const setStyle = (changes) => {
    if (!changes || typeof changes !== "object") return;
    for (const key of /** @type {const} */ (["nameDisplayMode", "buttonDisplayMode", "audioLevelDisplayMode"])) {
      if (key in changes) style[key] = displayMode(changes[key], style[key]);
    }
    if ("backgroundImageURI" in changes) style.backgroundImageURI = changes.backgroundImageURI ?? "";
    applyMode(nameBar, style.nameDisplayMode);
    applyMode(muteButton, style.buttonDisplayMode);
    applyMode(meter, style.audioLevelDisplayMode);
    const uri = style.backgroundImageURI;
    poster.style.backgroundImage = uri ? `url(${JSON.stringify(uri)})` : "none";
  };
  /** @param {string} value */
  const setName = (value) => {
    name = value == null ? "" : String(value);
    nameBar.textContent = name;
    nameBar.title = name;
    nameBar.classList.toggle("OT_widget-hidden", name === "");
  };
  /** @param {boolean} value */
  const setMuted = (value) => {
    muted = Boolean(value);
    muteButton.classList.toggle("OT_active", muted);
    muteButton.setAttribute("aria-pressed", String(muted));
    muteButton.setAttribute("aria-label", muted ? "Unmute" : "Mute");
    muteButton.title = muted ? "Unmute" : "Mute";
    if (kind === "subscriber") video.muted = muted;
  };
  const onClick = () => {
    setMuted(!muted);
    for (const callback of [...muteCallbacks]) callback(muted);
  };
  muteButton.addEventListener("click", onClick);

  setStyle(options.style ?? {});
  setName(options.name ?? "");
  setMuted(false);

  return {
    element: root,
    video,
    setName,
    setAudioLevel(level) {
      const value = Number.isFinite(level) ? Math.min(1, Math.max(0, level)) : 0;
      meter.style.setProperty("--OT-audio-level", value.toFixed(3));
    },
    setVideoOff(off) {
      root.classList.toggle("OT_audio-only", Boolean(off));
    },
    onMuteToggle(callback) {
      if (typeof callback === "function") muteCallbacks.push(callback);
    },
    setMuted,
    setStyle,
    getStyle: () => ({ ...style }),
    destroy() {
      muteButton.removeEventListener("click", onClick);
      video.removeEventListener("loadeddata", onData);
      muteCallbacks.length = 0;
      video.pause();
      video.srcObject = null;
      root.remove();
    },
  };
}
