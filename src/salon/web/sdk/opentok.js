// OpenTok.js 2.x on salon, as an ES module (also served as one file, /v2/js/opentok.mjs, and as
// the classic script /v2/js/opentok.js that defines the global `OT`). See docs/opentok-js.md.
//
//   import OT from "https://salon.example.com/sdk/opentok.js";
//   const session = OT.initSession(apiKey, sessionId);
//
// It talks to the server it was loaded from unless OT.setServerUrl(url) says otherwise.
import { OT, useScriptOrigin } from "./ot/ot.js";

useScriptOrigin(import.meta.url);

export { OT };
export default OT;
