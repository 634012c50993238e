// OpenTok.js's collections (session.streams, session.connections): get, has, find and where by
// attributes or a function, forEach, map, and length() as a method.

/** @template T */
export class Collection {
  /** @type {Map<string, T>} */
  #items = new Map();

  /** @param {string} id @returns {T|undefined} */
  get(id) {
    return this.#items.get(id);
  }

  /** @param {string} id @returns {boolean} */
  has(id) {
    return this.#items.has(id);
  }

  /** @returns {number} */
  length() {
    return this.#items.size;
  }

  /**
   * @param {((item: T) => boolean)|Record<string, any>} test
   * @param {any} [context]
   * @returns {T[]}
   */
  where(test, context) {
    return [...this.#items.values()].filter(matcher(test, context));
  }

  /**
   * @param {((item: T) => boolean)|Record<string, any>} test
   * @param {any} [context]
   * @returns {T|null}
   */
  find(test, context) {
    const match = matcher(test, context);
    for (const item of this.#items.values()) if (match(item)) return item;
    return null;
  }

  /**
   * @param {(item: T) => void} fn
   * @param {any} [context]
   * @returns {this}
   */
  forEach(fn, context) {
    [...this.#items.values()].forEach(fn, context);
    return this;
  }

  /**
   * @template U
   * @param {(item: T) => U} fn
   * @returns {U[]}
   */
  map(fn) {
    return [...this.#items.values()].map(fn);
  }

  /** @param {string} id @param {T} item */
  _add(id, item) {
    this.#items.set(id, item);
  }

  /** @param {string} id */
  _remove(id) {
    this.#items.delete(id);
  }

  _clear() {
    this.#items.clear();
  }

  /** @returns {T[]} */
  toArray() {
    return [...this.#items.values()];
  }
}

/**
 * @param {((item: any) => boolean)|Record<string, any>} test
 * @param {any} context
 * @returns {(item: any) => boolean}
 */
function matcher(test, context) {
  if (typeof test === "function") {
    const fn = /** @type {(this: any, item: any) => boolean} */ (test);
    return (item) => fn.call(context, item) === true;
  }
  return (item) =>
    Object.entries(test).every(([key, value]) => (typeof item[key] === "function" ? item[key]() : item[key]) === value);
}
