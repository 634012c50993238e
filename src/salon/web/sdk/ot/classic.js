// The entry of the classic script /v2/js/opentok.js (salon serve bundles this module graph into
// one script at start-up): the global `OT`, talking by default to the server the script came from.
import { OT, useScriptOrigin } from "./ot.js";

const script = /** @type {HTMLScriptElement|null} */ (document.currentScript);
useScriptOrigin(script?.src);
/** @type {any} */ (globalThis).OT = OT;
