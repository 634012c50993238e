// OT.Session, OT.Stream and OT.Connection on top of the salon SDK's Session: OpenTok.js's
// completion handlers, cancelable events, collections and error names.
import { initSession as salonInitSession } from "../salon.js";
import { EventEmitter, Event } from "./events.js";
import { OTError, toOTError, report, done } from "./errors.js";
import { Collection } from "./collection.js";
import { Publisher, withPromise } from "./publisher.js";
import { Subscriber } from "./subscriber.js";
import { config, log } from "./config.js";

/** A client connected to the session. */
export class Connection {
  /** @param {{connectionId: string, creationTime: number, data: string}} c */
  constructor(c) {
    this.connectionId = c.connectionId;
    this.id = c.connectionId;
    this.creationTime = c.creationTime;
    this.data = c.data;
  }
}

/** A published stream; its properties follow the publisher's changes. */
export class Stream {
  /**
   * @param {any} salonStream the salon SDK's stream (kept up to date by it)
   * @param {Connection} connection
   */
  constructor(salonStream, connection) {
    this._s = salonStream;
    this.connection = connection;
    this.streamId = salonStream.streamId;
    this.id = salonStream.streamId;
    this.creationTime = salonStream.creationTime;
  }

  get name() {
    return this._s.name;
  }

  get hasAudio() {
    return this._s.hasAudio;
  }

  get hasVideo() {
    return this._s.hasVideo;
  }

  /** @returns {"camera"|"screen"|"custom"|undefined} */
  get videoType() {
    return this._s.videoType ?? undefined;
  }

  get videoDimensions() {
    return this._s.videoDimensions ?? undefined;
  }

  get frameRate() {
    return this._s.frameRate ?? undefined;
  }
}

/** @param {any} c @returns {c is Connection} */
const isConnection = (c) => c instanceof Connection;

/**
 * Create with `OT.initSession(apiKey, sessionId, options)`.
 * Events: sessionConnected, sessionDisconnected, sessionReconnecting, sessionReconnected,
 * connectionCreated, connectionDestroyed, streamCreated, streamDestroyed,
 * streamPropertyChanged, signal, signal:TYPE, muteForced, archiveStarted, archiveStopped.
 */
export class Session extends EventEmitter {
  /**
   * @param {string} apiKey
   * @param {string} sessionId
   * @param {any} [options] OpenTok.js's options; `iceConfig.customServers` is honoured
   */
  constructor(apiKey, sessionId, options = {}) {
    super();
    if (typeof sessionId !== "string" || !sessionId) {
      throw new OTError("OT_INVALID_SESSION_ID", "initSession needs a session ID", 1005);
    }
    this.apiKey = apiKey == null ? "" : String(apiKey);
    this.sessionId = sessionId;
    this.id = sessionId;
    /** @type {Connection|undefined} */
    this.connection = undefined;
    /** @type {Collection<Stream>} */
    this.streams = new Collection();
    /** @type {Collection<Connection>} */
    this.connections = new Collection();
    this.capabilities = { forceDisconnect: 0, forceUnpublish: 0, forceMute: 0, publish: 0, subscribe: 0, supportsWebRTC: 1 };
    /** @type {Set<Publisher>} */
    this._publishers = new Set();
    /** @type {Set<Subscriber>} */
    this._subscribers = new Set();
    /** @type {Map<string, number>} each stream's last audio level (a subscriber starts from it) */
    this._lastLevels = new Map();
    /** @type {Event[]|null} events held back while connecting (they follow sessionConnected) */
    this._held = null;
    /** @type {any} the Compute Pressure observer behind cpuPerformanceChanged, while connected */
    this._pressure = null;
    const ice = options?.iceConfig;
    /** @type {any} */
    // resumeOnly: as OpenTok.js, a dropped link resumes the same connection (same connection
    // and stream IDs) or ends the session (sessionDisconnected, networkDisconnected); it never
    // comes back as a new connection.
    const salonOptions = { url: options?.serverUrl || config.serverUrl || undefined, resumeOnly: true };
    if (ice?.includeServers === "custom" && Array.isArray(ice.customServers)) {
      salonOptions.iceServers = ice.customServers.map((/** @type {any} */ s) => ({
        urls: Array.isArray(s.urls) ? s.urls : [s.urls],
        ...(s.username != null ? { username: s.username } : {}),
        ...(s.credential != null ? { credential: s.credential } : {}),
      }));
    }
    this._s = salonInitSession(sessionId, salonOptions);
    this._listen();

    const connect = async (/** @type {string} */ token) => {
      if (this._s.state !== "disconnected") throw new OTError("OT_INVALID_PARAMETER", "the session is already connected or connecting", 1011);
      if (typeof token !== "string" || !token) throw new OTError("OT_AUTHENTICATION_ERROR", "connect needs a token", 1004);
      this._held = [];
      try {
        await this._s.connect(token);
      } catch (err) {
        this._held = null;
        throw toOTError(err, "connect");
      }
      this.connection = this._connectionFor(/** @type {any} */ (this._s.connection));
      const role = this._s.role;
      const moderator = role === "moderator" ? 1 : 0;
      const publisher = moderator || role === "publisher" ? 1 : 0;
      this.capabilities = { forceDisconnect: moderator, forceUnpublish: moderator, forceMute: moderator, publish: publisher, subscribe: 1, supportsWebRTC: 1 };
      // OpenTok.js: connectionCreated for our own connection too, then the others', then streams.
      const held = [new Event("connectionCreated", this, { connection: this.connection }), ...(this._held || [])];
      this._held = null;
      this.trigger("sessionConnected");
      this._watchCpu();
      return held;
    };
    /** connect(token, completionHandler): the handler gets an OTError (name OT_AUTHENTICATION_ERROR, …) or nothing. */
    this.connect = Object.assign(
      (/** @type {string} */ token, /** @type {Function|undefined} */ completionHandler) => {
        connect(token).then(
          (held) => {
            done(completionHandler);
            for (const event of held) this.dispatchEvent(event);
          },
          (err) => report(toOTError(err, "connect"), this, completionHandler),
        );
        return this;
      },
      {
        promise: async (/** @type {string} */ token) => {
          try {
            const held = await connect(token);
            queueMicrotask(() => held.forEach((e) => this.dispatchEvent(e)));
            return this;
          } catch (err) {
            report(toOTError(err, "connect"), this);
            throw err;
          }
        },
      },
    );

    /** publish(publisher | target, properties, completionHandler) → the Publisher, at once. */
    this.publish = Object.assign(
      (/** @type {any} */ publisherOrTarget, /** @type {any} */ properties, /** @type {Function|undefined} */ completionHandler) => {
        const [publisher, handler] = this._publisherOf(publisherOrTarget, properties, completionHandler);
        this._publish(publisher).then(
          () => done(handler),
          (err) => report(toOTError(err, "publish"), publisher, handler),
        );
        return publisher;
      },
      {
        promise: async (/** @type {any} */ publisherOrTarget, /** @type {any} */ properties) => {
          const [publisher] = this._publisherOf(publisherOrTarget, properties, undefined);
          await this._publish(publisher).catch((err) => {
            throw toOTError(err, "publish");
          });
          return publisher;
        },
      },
    );

    /** subscribe(stream, target, properties, completionHandler) → the Subscriber, at once. */
    this.subscribe = Object.assign(
      (/** @type {Stream} */ stream, /** @type {any} */ target, /** @type {any} */ properties, /** @type {Function|undefined} */ completionHandler) => {
        if (typeof target === "function") [target, properties, completionHandler] = [undefined, undefined, target];
        else if (typeof properties === "function") [properties, completionHandler] = [undefined, properties];
        // OpenTok.js: subscribe(stream, {insertDefaultUI: false}) passes the properties in place of the target.
        if (target && typeof target === "object" && !(target instanceof Element) && target.insertDefaultUI === false) {
          [target, properties] = [undefined, target];
        }
        return this._subscribe(stream, target, properties, completionHandler);
      },
      {
        promise: (/** @type {Stream} */ stream, /** @type {any} */ target, /** @type {any} */ properties) =>
          new Promise((resolve, reject) => {
            const subscriber = this._subscribe(stream, target, properties, (/** @type {any} */ err) =>
              err ? reject(err) : resolve(/** @type {Subscriber} */ (subscriber)),
            );
          }),
      },
    );
  }

  /** Follow the salon session's events as OpenTok.js events. */
  _listen() {
    const s = this._s;
    s.on("connectionCreated", (/** @type {any} */ e) => {
      const connection = this._connectionFor(e.connection);
      this._emit("connectionCreated", { connection });
    });
    s.on("connectionDestroyed", (/** @type {any} */ e) => {
      const connection = this._connectionFor(e.connection);
      this.connections._remove(connection.connectionId);
      this._emit("connectionDestroyed", { connection, reason: e.reason });
    });
    s.on("streamCreated", (/** @type {any} */ e) => {
      if (this._own(e.stream)) return;
      this._emit("streamCreated", { stream: this._streamFor(e.stream) });
    });
    s.on("streamDestroyed", (/** @type {any} */ e) => this._streamDestroyed(e.stream, e.reason));
    s.on("streamPropertyChanged", (/** @type {any} */ e) => {
      const stream = this._streamFor(e.stream);
      this._emit("streamPropertyChanged", { stream, changedProperty: e.changedProperty, oldValue: e.oldValue, newValue: e.newValue });
      if (e.changedProperty === "hasVideo") {
        for (const sub of this._subscribers) if (sub.stream === stream) sub._streamVideoChanged();
      }
    });
    s.on("signal", (/** @type {any} */ e) => {
      const type = e.signalType ? `signal:${e.signalType}` : "signal";
      const from = e.from ? this._connectionFor(e.from) : null;
      const event = new Event(type, this, { data: e.data, from });
      this.dispatchEvent(event, "signal");
      if (e.signalType) this.dispatchEvent(event, type);
    });
    // OpenTok.js: the Session's muteForced goes to every client when mute-all is switched on
    // (active true) or off (active false); a single forced mute is only the Publisher's event.
    s.on("archiveStarted", (/** @type {any} */ e) => this._emit("archiveStarted", { id: e.id, name: e.name }));
    s.on("archiveStopped", (/** @type {any} */ e) => this._emit("archiveStopped", { id: e.id, name: e.name }));
    s.on("muteAllChanged", (/** @type {any} */ e) => this._emit("muteForced", { active: e.active }));
    s.on("audioLevelUpdated", (/** @type {any} */ e) => {
      this._lastLevels.set(e.streamId, e.audioLevel);
      for (const p of this._publishers) if (p.stream?.streamId === e.streamId) p._audioLevel(e.audioLevel);
    });
    s.on("sessionReconnecting", () => {
      this._emit("sessionReconnecting");
      for (const sub of this._subscribers) sub.trigger("disconnected");
    });
    s.on("sessionReconnected", () => {
      // The same connection (resumeOnly: the salon session never comes back as a new one).
      if (this._s.connection) this.connection = this._connectionFor(this._s.connection);
      this._emit("sessionReconnected");
      // A publisher's media may be on a new peer connection (resumed or republished): cap it again.
      for (const p of this._publishers) p._applyBitrate().catch((err) => log(2, "could not apply the maximum video bitrate", err));
      for (const sub of this._subscribers) {
        sub._attach();
        sub.trigger("connected");
      }
    });
    s.on("sessionDisconnected", (/** @type {any} */ e) => {
      const reason = e.reason;
      const event = this._emit("sessionDisconnected", { reason }, true);
      // Unless prevented, every subscriber goes with its element (salon ended them already).
      if (event.isDefaultPrevented()) for (const sub of this._subscribers) sub._keep = true;
      this.streams._clear();
      this.connections._clear();
      this.connection = undefined;
      this._pressure?.disconnect();
      this._pressure = null;
    });
  }

  /**
   * OpenTok.js's cpuPerformanceChanged: the Compute Pressure API's CPU state ("nominal",
   * "fair", "serious", "critical"), dispatched when it changes while connected. Browsers
   * without the API (or refusing it) dispatch nothing.
   */
  _watchCpu() {
    const PressureObserver = /** @type {any} */ (globalThis).PressureObserver;
    if (typeof PressureObserver !== "function" || this._pressure) return;
    /** @type {string|null} */
    let last = null;
    const observer = new PressureObserver((/** @type {{state: string}[]} */ records) => {
      const state = records[records.length - 1]?.state;
      if (!state || state === last || observer !== this._pressure) return;
      last = state;
      this._emit("cpuPerformanceChanged", { cpuPerformanceState: state });
    });
    this._pressure = observer;
    observer.observe("cpu", { sampleInterval: 1000 }).catch((/** @type {any} */ err) => {
      log(3, "no CPU pressure information", err);
      if (this._pressure === observer) this._pressure = null;
    });
  }

  /**
   * Dispatch now, or after sessionConnected while connecting.
   * @param {string} type
   * @param {Record<string, any>} [fields]
   * @param {boolean} [cancelable]
   * @returns {Event}
   */
  _emit(type, fields = {}, cancelable = false) {
    const event = new Event(type, this, fields, cancelable);
    if (this._held && type !== "sessionConnected") this._held.push(event);
    else this.dispatchEvent(event);
    return event;
  }

  /** @param {any} salonStream */
  _own(salonStream) {
    return salonStream.connection?.connectionId === this._s.connection?.connectionId;
  }

  /** @param {any} c @returns {Connection} */
  _connectionFor(c) {
    let connection = this.connections.get(c.connectionId);
    if (!connection) {
      connection = new Connection(c);
      this.connections._add(connection.connectionId, connection);
    }
    return connection;
  }

  /** @param {any} salonStream @returns {Stream} */
  _streamFor(salonStream) {
    let stream = this.streams.get(salonStream.streamId);
    if (!stream) {
      stream = new Stream(salonStream, this._connectionFor(salonStream.connection));
      this.streams._add(stream.streamId, stream);
    } else stream._s = salonStream;
    return stream;
  }

  /**
   * @param {any} salonStream
   * @param {string} reason
   */
  _streamDestroyed(salonStream, reason) {
    if (salonStream) this._lastLevels.delete(salonStream.streamId);
    if (!salonStream || this._own(salonStream)) return;
    // OpenTok.js: the others see an unpublished stream go with reason clientDisconnected.
    if (reason === "unpublished") reason = "clientDisconnected";
    const stream = this.streams.get(salonStream.streamId) || this._streamFor(salonStream);
    this.streams._remove(stream.streamId);
    const subscribers = [...this._subscribers].filter((sub) => sub.stream === stream);
    const event = new Event("streamDestroyed", this, { stream, reason }, true);
    this.dispatchEvent(event);
    // Default action: destroy the stream's subscribers (their salon side is gone already).
    if (event.isDefaultPrevented()) for (const sub of subscribers) sub._keep = true;
    else for (const sub of subscribers) sub._destroy(reason);
  }

  /** @returns {boolean} */
  isConnected() {
    return this._s.state === "connected" || this._s.state === "reconnecting";
  }

  /** Leave the session (sessionDisconnected, reason clientDisconnected). */
  async disconnect() {
    this._s.disconnect();
  }

  /**
   * @param {any} publisherOrTarget
   * @param {any} properties
   * @param {Function|undefined} completionHandler
   * @returns {[Publisher, Function|undefined]}
   */
  _publisherOf(publisherOrTarget, properties, completionHandler) {
    if (publisherOrTarget instanceof Publisher) {
      return [publisherOrTarget, typeof properties === "function" ? properties : completionHandler];
    }
    if (typeof properties === "function") [properties, completionHandler] = [undefined, properties];
    return [new Publisher(publisherOrTarget, properties), completionHandler];
  }

  /** @param {Publisher} publisher */
  async _publish(publisher) {
    if (this._s.state !== "connected") throw new OTError("OT_NOT_CONNECTED", "connect to the session before publishing", 1010);
    if (publisher._destroyed) throw new OTError("OT_INVALID_PARAMETER", "this publisher was destroyed", 1011);
    if (this.capabilities.publish !== 1) throw new OTError("OT_PERMISSION_DENIED", "this token does not allow publishing (role subscriber)", 1500);
    publisher.session = this;
    this._publishers.add(publisher);
    try {
      await this._s.publish(publisher._salon);
    } catch (err) {
      this._publishers.delete(publisher);
      publisher.session = undefined;
      throw err;
    }
  }

  /** The salon publisher has a stream (at first, or again after a reconnection). @param {Publisher} publisher */
  _publisherStreamCreated(publisher) {
    const salonStream = publisher._salon.stream;
    if (!salonStream) return;
    const before = publisher.stream;
    publisher.stream = this._streamFor(salonStream);
    if (before?.streamId !== salonStream.streamId) {
      if (before) this.streams._remove(before.streamId);
      publisher.trigger("streamCreated", { stream: publisher.stream });
    }
  }

  /**
   * A publisher's stream ended (unpublished, force-unpublished, or the session ended).
   * @param {Publisher} publisher
   * @param {Stream|undefined} stream
   */
  _publisherGone(publisher, stream) {
    this._publishers.delete(publisher);
    if (stream) this.streams._remove(stream.streamId);
  }

  /** @param {Publisher} publisher */
  unpublish(publisher) {
    this._unpublish(publisher, false).catch((err) => log(1, "unpublish failed", err));
  }

  /**
   * @param {Publisher} publisher
   * @param {boolean} destroying
   */
  async _unpublish(publisher, destroying) {
    if (!this._publishers.has(publisher)) return;
    this._publishers.delete(publisher);
    const stream = publisher.stream;
    await this._s.unpublish(publisher._salon).catch((/** @type {any} */ err) => log(2, "unpublish", err));
    if (stream) this.streams._remove(stream.streamId);
    if (!destroying) publisher._streamEnded("unpublished");
  }

  /**
   * @param {Stream} stream
   * @param {any} target
   * @param {any} properties
   * @param {Function|undefined} completionHandler
   * @returns {Subscriber|undefined} undefined, as in OpenTok.js, when it cannot even start
   */
  _subscribe(stream, target, properties, completionHandler) {
    // The refusals OpenTok.js makes before creating a Subscriber, with its names and codes.
    /** @type {OTError|null} */
    let refusal = null;
    if (this._s.state !== "connected") {
      refusal = new OTError("OT_NOT_CONNECTED", "Session.subscribe :: Connection required to subscribe", 1501);
    } else if (!(stream instanceof Stream)) {
      refusal = new OTError("OT_INVALID_PARAMETER", "Session.subscribe :: a Stream (from a streamCreated event) is needed", 1501);
    } else if (properties?.insertDefaultUI === false && target) {
      refusal = new OTError("OT_INVALID_PARAMETER", "You cannot specify a target element if insertDefaultUI is false", 1011);
    }
    if (refusal) {
      report(refusal, this, completionHandler);
      return undefined;
    }
    const subscriber = new Subscriber(this, stream, target, properties);
    this._subscribers.add(subscriber);
    const salonStream = this._s.streams.get(stream.streamId);
    if (!salonStream) {
      subscriber._destroy("subscribeFailed", true);
      report(new OTError("OT_STREAM_NOT_FOUND", `no stream ${stream.streamId} in the session`, 1501), subscriber, completionHandler);
      return subscriber;
    }
    subscriber._start(this._s, salonStream, completionHandler);
    return subscriber;
  }

  /** @param {Subscriber} subscriber */
  _subscriberGone(subscriber) {
    this._subscribers.delete(subscriber);
  }

  /** @param {Subscriber} subscriber */
  unsubscribe(subscriber) {
    if (!(subscriber instanceof Subscriber)) return;
    const sub = subscriber._salon;
    subscriber._destroy("unsubscribed");
    if (sub) this._s.unsubscribe(sub).catch((/** @type {any} */ err) => log(2, "unsubscribe", err));
  }

  /**
   * Send a signal to the session or to one connection.
   * @param {{type?: string, data?: string, to?: Connection, retryAfterReconnect?: boolean}} signal
   * @param {Function} [completionHandler]
   */
  async signal(signal, completionHandler) {
    try {
      const { type = "", data = "", to, retryAfterReconnect = true } = signal || {};
      if (to != null && !isConnection(to)) throw new OTError("OT_INVALID_PARAMETER", "signal's `to` must be a Connection", 400);
      if (typeof data !== "string") throw new OTError("OT_INVALID_PARAMETER", "signal's `data` must be a string", 400);
      const waits = this._s.state === "reconnecting" && retryAfterReconnect;
      if (this._s.state !== "connected" && !waits) throw new OTError("OT_NOT_CONNECTED", "connect to the session before signalling", 500);
      // With retryAfterReconnect the salon session holds the signal while reconnecting (or if
      // the link drops before the server's reply) and sends it once resumed, in order; a
      // session that ends meanwhile fails it (OT_NOT_CONNECTED).
      await this._s.signal({ type, data, to: to ? to.connectionId : undefined, retryAfterReconnect: Boolean(retryAfterReconnect) });
      done(completionHandler);
    } catch (err) {
      const error = toOTError(err, "signal");
      // As OpenTok.js: to the completion handler and as an exception; the promise rejects only
      // for a caller that gave no handler (else every doc-style call would leave it unhandled).
      report(error, this, completionHandler);
      if (typeof completionHandler !== "function") throw error;
    }
  }

  /**
   * Run a moderator's request with OpenTok.js's error delivery (completion handler and exception).
   * @param {() => Promise<void>} run
   * @param {"forceDisconnect"|"forceUnpublish"|"forceMute"} context
   * @param {Function} [completionHandler]
   */
  async _moderate(run, context, completionHandler) {
    try {
      if (this._s.state !== "connected") throw new OTError("OT_NOT_CONNECTED", `connect before ${context}`, 1010);
      await run();
      done(completionHandler);
    } catch (err) {
      const error = toOTError(err, context);
      report(error, this, completionHandler);
      if (typeof completionHandler !== "function") throw error;
    }
  }

  /** @param {Connection} connection @param {Function} [completionHandler] */
  forceDisconnect(connection, completionHandler) {
    return this._moderate(() => this._s.forceDisconnect(connectionIdOf(connection)), "forceDisconnect", completionHandler);
  }

  /** @param {Stream} stream @param {Function} [completionHandler] */
  forceUnpublish(stream, completionHandler) {
    return this._moderate(() => this._s.forceUnpublish(streamIdOf(stream)), "forceUnpublish", completionHandler);
  }

  /** @param {Stream} stream */
  forceMuteStream(stream) {
    return this._moderate(() => this._s.forceMuteStream(streamIdOf(stream)), "forceMute");
  }

  /** @param {Stream[]} [excludedStreams] */
  forceMuteAll(excludedStreams = []) {
    return this._moderate(() => this._s.forceMuteAll((excludedStreams || []).map(streamIdOf)), "forceMute");
  }

  disableForceMute() {
    return this._moderate(() => this._s.disableForceMute(), "forceMute");
  }

  /** @param {Stream} stream @returns {Publisher|undefined} */
  getPublisherForStream(stream) {
    return [...this._publishers].find((p) => p.stream && p.stream.streamId === streamIdOf(stream));
  }

  /** @param {Stream} stream @returns {Subscriber[]} */
  getSubscribersForStream(stream) {
    return [...this._subscribers].filter((s) => s.stream.streamId === streamIdOf(stream));
  }
}

/** @param {any} connection @returns {string} */
function connectionIdOf(connection) {
  const id = typeof connection === "string" ? connection : connection?.connectionId;
  if (!id) throw new OTError("OT_INVALID_PARAMETER", "a Connection is needed", 1011);
  return id;
}

/** @param {any} stream @returns {string} */
function streamIdOf(stream) {
  const id = typeof stream === "string" ? stream : stream?.streamId;
  if (!id) throw new OTError("OT_INVALID_PARAMETER", "a Stream is needed", 1011);
  return id;
}

export { withPromise };
