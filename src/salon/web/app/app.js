// The salon demo video chat: join a room by name, see and hear everyone, chat.
// Uses only the browser SDK (/sdk/salon.js) and the server's demo endpoint (POST /demo/join).
import { initPublisher, initSession, SalonError } from "/sdk/salon.js";

/** @typedef {import("/sdk/salon.js").Session} Session */
/** @typedef {import("/sdk/salon.js").Publisher} Publisher */
/** @typedef {import("/sdk/salon.js").Stream} Stream */

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** Everything the page holds about the call; exposed as `window.salonApp` for debugging. */
const app = {
  /** @type {Session|null} */ session: null,
  /** @type {Publisher|null} */ publisher: null,
  /** @type {Publisher|null} */ screen: null,
  /** @type {Map<string, any>} */ subscribers: new Map(),
  room: "",
  name: "",
};
/** @type {any} */ (window).salonApp = app;

/** @type {ReturnType<typeof setTimeout>|null} */
let statusTimer = null;

/**
 * @param {string} text
 * @param {"error"|"warning"|"ok"} [kind]
 * @param {number} [hideAfter] milliseconds after which the message goes away (default: it stays)
 */
function showStatus(text, kind = "warning", hideAfter = 0) {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
  status.hidden = !text;
  if (statusTimer) clearTimeout(statusTimer);
  statusTimer = hideAfter ? setTimeout(() => showStatus(""), hideAfter) : null;
}

/** What the app says when the demo endpoint is switched off. */
const DEMO_OFF =
  "This server does not hand out demo tokens: its demo endpoint is switched off (salon serve --no-demo). " +
  "Production apps mint session tokens in their own server, after signing their users in; " +
  "see docs/browser-sdk.md.";

/**
 * A session and a token for a room, from the server's demo endpoint.
 * @param {string} room
 * @param {string} name
 * @returns {Promise<{sessionId: string, token: string, apiKey: string}>}
 */
async function demoJoin(room, name) {
  let response;
  try {
    response = await fetch("/demo/join", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ room, name }),
    });
  } catch {
    throw new SalonError("network_error", "the server cannot be reached");
  }
  const body = await response.json().catch(() => ({}));
  if (response.ok) return body;
  if (response.status === 404) throw new SalonError("demo_disabled", DEMO_OFF);
  throw new SalonError(body.code || "http_error", body.message || response.statusText);
}

/** @param {string} data connection data: `{"name": ...}` from the demo endpoint, else shown as is */
function nameOf(data) {
  try {
    const parsed = JSON.parse(data);
    if (parsed && typeof parsed.name === "string") return parsed.name;
  } catch {
    // not JSON
  }
  return data || "Guest";
}

/**
 * A participant's tile: video container, name, mute indicators.
 * @param {string} key
 * @param {string} name
 * @param {{local?: boolean, screen?: boolean}} [flags]
 */
function createTile(key, name, flags = {}) {
  const tile = document.createElement("figure");
  tile.className = "tile" + (flags.local ? " local" : "") + (flags.screen ? " screen" : "");
  tile.dataset.key = key;
  tile.dataset.name = name;
  tile.dataset.initial = name.slice(0, 1).toUpperCase();
  tile.setAttribute("aria-label", flags.screen ? `${name}'s screen` : name);
  const media = document.createElement("div");
  media.className = "media";
  media.style.height = "100%";
  const label = document.createElement("figcaption");
  label.className = "label";
  const who = document.createElement("span");
  who.className = "name";
  who.textContent = flags.screen ? `${name} (screen)` : flags.local ? `${name} (you)` : name;
  const audioOff = document.createElement("span");
  audioOff.className = "indicator audio-off";
  audioOff.textContent = "🔇 muted";
  audioOff.hidden = true;
  const videoOff = document.createElement("span");
  videoOff.className = "indicator video-off";
  videoOff.textContent = "video off";
  videoOff.hidden = true;
  label.append(who, audioOff, videoOff);
  tile.append(media, label);
  $("grid").appendChild(tile);
  return tile;
}

/** @param {string} key */
const tileOf = (key) => /** @type {HTMLElement|null} */ (document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`));

/**
 * @param {HTMLElement|null} tile
 * @param {boolean} hasAudio
 * @param {boolean} hasVideo
 */
function setIndicators(tile, hasAudio, hasVideo) {
  if (!tile) return;
  /** @type {HTMLElement} */ (tile.querySelector(".audio-off")).hidden = hasAudio;
  /** @type {HTMLElement} */ (tile.querySelector(".video-off")).hidden = hasVideo;
  tile.classList.toggle("no-video", !hasVideo);
  tile.dataset.audio = String(hasAudio);
  tile.dataset.video = String(hasVideo);
}

/**
 * @param {string} from
 * @param {string} text
 */
function addMessage(from, text) {
  const item = document.createElement("li");
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = from;
  item.append(who, document.createTextNode(text));
  $("messages").appendChild(item);
  item.scrollIntoView({ block: "end" });
}

/** @param {Stream} stream */
async function subscribeTo(stream) {
  const session = /** @type {Session} */ (app.session);
  const name = stream.videoType === "screen" ? nameOf(stream.connection.data) : stream.name || nameOf(stream.connection.data);
  const tile = createTile(stream.streamId, name, { screen: stream.videoType === "screen" });
  tile.dataset.streamId = stream.streamId;
  tile.dataset.connectionId = stream.connection.connectionId;
  setIndicators(tile, stream.hasAudio, stream.hasVideo);
  try {
    const subscriber = await session.subscribe(stream, /** @type {HTMLElement} */ (tile.querySelector(".media")));
    app.subscribers.set(stream.streamId, subscriber);
  } catch (err) {
    tile.remove();
    if (session.streams.has(stream.streamId)) {
      showStatus(`Could not receive ${name}'s stream: ${/** @type {Error} */ (err).message}`, "error");
    }
  }
}

/**
 * @param {string} room
 * @param {string} name
 */
async function join(room, name) {
  showStatus("");
  $("join").setAttribute("disabled", "");
  let grant;
  try {
    grant = await demoJoin(room, name);
  } catch (err) {
    const e = /** @type {SalonError} */ (err);
    $("join").removeAttribute("disabled");
    showStatus(e.code === "demo_disabled" ? e.message : `Could not join: ${e.message}`, "error");
    return;
  }
  const sessionId = grant.sessionId;
  const session = initSession(sessionId, {
    // A token that expired while the connection was down: the demo endpoint hands out a new one.
    refreshToken: async () => {
      const fresh = await demoJoin(room, name);
      if (fresh.sessionId !== sessionId) throw new SalonError("not_found", "the room is gone (the server restarted)");
      return fresh.token;
    },
  });
  app.session = session;
  app.room = room;
  app.name = name;
  session.on("streamCreated", (e) => subscribeTo(e.stream));
  session.on("streamDestroyed", (e) => {
    tileOf(e.stream.streamId)?.remove();
    app.subscribers.delete(e.stream.streamId);
  });
  session.on("streamPropertyChanged", (e) => {
    setIndicators(tileOf(e.stream.streamId), e.stream.hasAudio, e.stream.hasVideo);
  });
  session.on("connectionCreated", (e) => addMessage("", `${nameOf(e.connection.data)} joined`));
  session.on("connectionDestroyed", (e) => addMessage("", `${nameOf(e.connection.data)} left`));
  session.on("signal:chat", (e) => addMessage(e.from ? nameOf(e.from.data) : "server", e.data));
  session.on("activeSpeaker", (e) => {
    for (const tile of document.querySelectorAll(".tile")) {
      const key = /** @type {HTMLElement} */ (tile).dataset.key;
      const own = key === "local" && app.publisher?.stream?.streamId === e.streamId;
      tile.classList.toggle("speaking", !!e.streamId && (key === e.streamId || own));
    }
  });
  session.on("muteForced", () => {
    updateAudioButton(false);
    setIndicators(tileOf("local"), false, !!app.publisher?.publishingVideo);
    showStatus("A moderator muted your microphone.");
  });
  session.on("sessionReconnecting", () => showStatus("Connection lost. Reconnecting…"));
  session.on("sessionReconnected", () => showStatus("Reconnected.", "ok", 4000));
  session.on("sessionDisconnected", (e) => {
    if (e.reason === "clientDisconnected") return;
    const text = e.reason === "forceDisconnected"
      ? "Disconnected: a moderator removed you from the room. Join again to come back."
      : e.error?.code === "token_expired"
        ? "Disconnected: your access token expired while the connection was down. Join again to get a new one."
        : "Disconnected: the connection to the server was lost. Join again to come back.";
    leave(false);
    showStatus(text, "error");
  });
  try {
    await session.connect(grant.token);
  } catch (err) {
    const e = /** @type {SalonError} */ (err);
    app.session = null;
    $("join").removeAttribute("disabled");
    const text = e.code === "token_expired" ? "your access token has expired; join again to get a new one" : e.message;
    showStatus(`Could not join: ${text}.`, "error");
    return;
  }
  history.replaceState(null, "", `/?room=${encodeURIComponent(room)}`);
  $("room-title").textContent = `Room: ${room}`;
  $("join-form").hidden = true;
  $("call").hidden = false;
  $("controls").hidden = false;
  const tile = createTile("local", name, { local: true });
  const publisher = initPublisher(/** @type {HTMLElement} */ (tile.querySelector(".media")), { name });
  app.publisher = publisher;
  try {
    await publisher.ready;
  } catch (err) {
    tile.remove();
    app.publisher = null;
    const e = /** @type {SalonError} */ (err);
    const text = e.code === "media_access_denied"
      ? "Camera and microphone access was refused, so the others cannot see or hear you. Allow access in your browser's site settings and join again."
      : `Your camera or microphone is not available (${e.message}). You can still watch and chat.`;
    showStatus(text, "error");
    $("toggle-audio").setAttribute("disabled", "");
    $("toggle-video").setAttribute("disabled", "");
    return;
  }
  try {
    await session.publish(publisher);
    tile.dataset.streamId = publisher.stream?.streamId || "";
    setIndicators(tile, publisher.publishingAudio, publisher.publishingVideo);
  } catch (err) {
    showStatus(`Could not publish: ${/** @type {Error} */ (err).message}`, "error");
  }
  publisher.on("streamCreated", (e) => {
    tile.dataset.streamId = e.stream.streamId; // after a reconnection the stream is new
  });
}

/** @param {boolean} on */
function updateAudioButton(on) {
  const button = $("toggle-audio");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Mute" : "Unmute";
}

/** @param {boolean} on */
function updateVideoButton(on) {
  const button = $("toggle-video");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Stop video" : "Start video";
}

/** @param {boolean} disconnect */
function leave(disconnect) {
  const session = app.session;
  app.session = null;
  if (disconnect && session) session.disconnect();
  app.publisher?.destroy();
  app.screen?.destroy();
  app.publisher = app.screen = null;
  app.subscribers.clear();
  $("grid").replaceChildren();
  $("messages").replaceChildren();
  $("call").hidden = true;
  $("controls").hidden = true;
  $("join-form").hidden = false;
  $("join").removeAttribute("disabled");
  $("toggle-audio").removeAttribute("disabled");
  $("toggle-video").removeAttribute("disabled");
  updateAudioButton(true);
  updateVideoButton(true);
  $("toggle-screen").setAttribute("aria-pressed", "false");
  $("toggle-screen").textContent = "Share screen";
}

async function toggleScreen() {
  const session = app.session;
  if (!session) return;
  const button = $("toggle-screen");
  if (app.screen) {
    const screen = app.screen;
    app.screen = null;
    await screen.destroy();
    tileOf("screen")?.remove();
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Share screen";
    return;
  }
  const tile = createTile("screen", app.name, { local: true, screen: true });
  const screen = initPublisher(/** @type {HTMLElement} */ (tile.querySelector(".media")), {
    name: `${app.name} (screen)`,
    videoSource: "screen",
    audio: false,
  });
  try {
    await screen.ready;
    await session.publish(screen);
  } catch (err) {
    tile.remove();
    screen.destroy();
    showStatus(`Could not share the screen: ${/** @type {Error} */ (err).message}`, "error");
    return;
  }
  app.screen = screen;
  screen.on("mediaStopped", () => {
    if (app.screen === screen) toggleScreen();
  });
  button.setAttribute("aria-pressed", "true");
  button.textContent = "Stop sharing";
}

function setUp() {
  const params = new URLSearchParams(location.search);
  const room = params.get("room");
  if (room) /** @type {HTMLInputElement} */ ($("room")).value = room;
  const saved = localStorage.getItem("salon.name");
  if (saved) /** @type {HTMLInputElement} */ ($("name")).value = saved;
  (room ? $("name") : $("room")).focus();
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const roomName = /** @type {HTMLInputElement} */ ($("room")).value.trim();
    const name = /** @type {HTMLInputElement} */ ($("name")).value.trim();
    localStorage.setItem("salon.name", name);
    join(roomName, name);
  });
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("chat-input"));
    const text = input.value.trim();
    if (!text || !app.session) return;
    app.session.signal({ type: "chat", data: text }).then(
      () => { input.value = ""; },
      (err) => showStatus(`Message not sent: ${err.message}`, "error"),
    );
  });
  $("toggle-audio").addEventListener("click", async () => {
    const publisher = app.publisher;
    if (!publisher) return;
    const on = !publisher.publishingAudio;
    updateAudioButton(on);
    setIndicators(tileOf("local"), on, publisher.publishingVideo);
    await publisher.publishAudio(on).catch((err) => showStatus(err.message, "error"));
  });
  $("toggle-video").addEventListener("click", async () => {
    const publisher = app.publisher;
    if (!publisher) return;
    const on = !publisher.publishingVideo;
    updateVideoButton(on);
    setIndicators(tileOf("local"), publisher.publishingAudio, on);
    await publisher.publishVideo(on).catch((err) => showStatus(err.message, "error"));
  });
  $("toggle-screen").addEventListener("click", () => toggleScreen());
  $("copy-link").addEventListener("click", async () => {
    const link = `${location.origin}/?room=${encodeURIComponent(app.room)}`;
    try {
      await navigator.clipboard.writeText(link);
      showStatus(`Link copied: ${link}`, "ok");
    } catch {
      showStatus(`Share this link: ${link}`, "ok");
    }
  });
  $("leave").addEventListener("click", () => {
    leave(true);
    showStatus("You left the room.", "ok");
  });
}

setUp();
