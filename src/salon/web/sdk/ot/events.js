// OpenTok.js-style events: event objects with `type`, `target`, `cancelable`,
// `preventDefault()`, `isDefaultPrevented()`; emitters with `on(type, handler, context)`,
// `on({type: handler})`, space-separated type lists, `once` and `off`.

/** An OpenTok.js event: the fields of its kind are own properties (`stream`, `reason`, …). */
export class Event {
  #prevented = false;

  /**
   * @param {string} type
   * @param {any} target
   * @param {Record<string, any>} [fields]
   * @param {boolean} [cancelable] whether `preventDefault()` stops the default action
   */
  constructor(type, target, fields = {}, cancelable = false) {
    /** @type {string} */
    this.type = type;
    this.target = target;
    this.cancelable = cancelable;
    Object.assign(this, fields);
  }

  /** Cancel the default action (only of a cancelable event). */
  preventDefault() {
    if (this.cancelable) this.#prevented = true;
  }

  /** @returns {boolean} */
  isDefaultPrevented() {
    return this.#prevented;
  }
}

/** @typedef {{handler: Function, context: any, once: boolean}} Listener */

/** The emitter of OT, Session, Publisher and Subscriber. */
export class EventEmitter {
  /** @type {Map<string, Listener[]>} */
  #listeners = new Map();

  /**
   * @param {string|Record<string, Function>} type one type, several separated by spaces, or {type: handler}
   * @param {Function|object} [handler] the handler; with a map, the context
   * @param {object} [context] `this` in the handler
   * @returns {this}
   */
  on(type, handler, context) {
    return this.#add(type, handler, context, false);
  }

  /**
   * As `on`, for the next event only.
   * @param {string|Record<string, Function>} type
   * @param {Function|object} [handler]
   * @param {object} [context]
   * @returns {this}
   */
  once(type, handler, context) {
    return this.#add(type, handler, context, true);
  }

  /**
   * Remove handlers: all of them (no arguments), all of a type (no handler), one handler (and
   * context, when given), or a {type: handler} map.
   * @param {string|Record<string, Function>} [type]
   * @param {Function|object} [handler]
   * @param {object} [context]
   * @returns {this}
   */
  off(type, handler, context) {
    if (type == null) {
      this.#listeners.clear();
      return this;
    }
    if (typeof type === "object") {
      for (const [name, fn] of Object.entries(type)) this.off(name, fn, /** @type {object|undefined} */ (handler));
      return this;
    }
    for (const name of type.split(/\s+/).filter(Boolean)) {
      if (typeof handler !== "function") {
        this.#listeners.delete(name);
        continue;
      }
      const kept = (this.#listeners.get(name) || []).filter(
        (l) => l.handler !== handler || (context !== undefined && l.context !== context),
      );
      if (kept.length) this.#listeners.set(name, kept);
      else this.#listeners.delete(name);
    }
    return this;
  }

  /** OpenTok.js's older names. */
  addEventListener(/** @type {string} */ type, /** @type {Function} */ handler, /** @type {object} */ context) {
    return this.on(type, handler, context);
  }

  removeEventListener(/** @type {string} */ type, /** @type {Function} */ handler, /** @type {object} */ context) {
    return this.off(type, handler, context);
  }

  /**
   * @param {string|Record<string, Function>} type
   * @param {Function|object|undefined} handler
   * @param {object|undefined} context
   * @param {boolean} once
   * @returns {this}
   */
  #add(type, handler, context, once) {
    if (type && typeof type === "object") {
      for (const [name, fn] of Object.entries(type)) this.#add(name, fn, handler, once);
      return this;
    }
    if (typeof type !== "string" || typeof handler !== "function") {
      throw new TypeError("on(type, handler[, context]) needs an event type and a function");
    }
    for (const name of type.split(/\s+/).filter(Boolean)) {
      const list = this.#listeners.get(name) || [];
      list.push({ handler, context, once });
      this.#listeners.set(name, list);
    }
    return this;
  }

  /**
   * Dispatch an event to its type's handlers (a failing handler is logged, the others still run).
   * @param {Event} event
   * @param {string} [name] the handlers' type, when not the event's (`signal` gets `signal:TYPE` events)
   * @returns {Event}
   */
  dispatchEvent(event, name = event.type) {
    const list = this.#listeners.get(name);
    if (!list) return event;
    for (const listener of [...list]) {
      if (listener.once) this.off(name, listener.handler, listener.context);
      try {
        listener.handler.call(listener.context ?? this, event);
      } catch (err) {
        console.error(`OT: a ${event.type} handler failed`, err);
      }
    }
    return event;
  }

  /**
   * Make and dispatch an event of `type` with this emitter as its target.
   * @param {string} type
   * @param {Record<string, any>} [fields]
   * @param {boolean} [cancelable]
   * @returns {Event}
   */
  trigger(type, fields = {}, cancelable = false) {
    return this.dispatchEvent(new Event(type, this, fields, cancelable));
  }
}
