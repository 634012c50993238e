"""The OpenTok.js-compatible scripts: served with ETag, 304, CORS; built from the ES modules."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import httpx
import pytest

from salon.server.jsbundle import BundleError, bundle
from salon.server.web import WEB_DIR
from tests.conftest import RunningServer

NODE = shutil.which("node")


def test_classic_script_and_module_are_served_with_caching_and_cors(server: RunningServer) -> None:
    classic = httpx.get(f"{server.url}/v2/js/opentok.js", headers={"Origin": "https://app.example.com"})
    assert classic.status_code == 200
    assert classic.headers["content-type"] == "text/javascript; charset=utf-8"
    assert classic.headers["access-control-allow-origin"] == "*"
    assert classic.headers["cache-control"] == "public, max-age=300"
    etag = classic.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert "globalThis).OT = OT" in classic.text
    # The .min.js name is the same script; the ES module is another bundle of the same modules.
    minified = httpx.get(f"{server.url}/v2/js/opentok.min.js")
    assert minified.content == classic.content and minified.headers["etag"] == etag
    module = httpx.get(f"{server.url}/v2/js/opentok.mjs")
    assert module.status_code == 200 and "export default" in module.text and module.headers["etag"] != etag
    # Conditional GET: the same ETag answers 304 with no body; another one gets the script.
    again = httpx.get(f"{server.url}/v2/js/opentok.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag and again.headers["access-control-allow-origin"] == "*"
    stale = httpx.get(f"{server.url}/v2/js/opentok.js", headers={"If-None-Match": '"old"'})
    assert stale.status_code == 200 and stale.content == classic.content
    head = httpx.head(f"{server.url}/v2/js/opentok.js")
    assert head.status_code == 200 and head.headers["etag"] == etag
    # Compressed for clients that take gzip (once, at start-up), under its own ETag.
    raw = httpx.get(f"{server.url}/v2/js/opentok.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and raw.headers["vary"] == "Accept-Encoding"
    zipped = httpx.get(f"{server.url}/v2/js/opentok.js", headers={"Accept-Encoding": "gzip, br"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == raw.content
    assert int(zipped.headers["content-length"]) < len(raw.content) / 3
    assert zipped.headers["etag"] != raw.headers["etag"]
    assert (
        httpx.get(
            f"{server.url}/v2/js/opentok.js",
            headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]},
        ).status_code
        == 304
    )
    # The ES modules themselves (imported cross-origin by module scripts) carry CORS too.
    esm = httpx.get(f"{server.url}/sdk/opentok.js")
    assert esm.status_code == 200 and esm.headers["access-control-allow-origin"] == "*"
    assert 'from "./ot/ot.js"' in esm.text and "etag" in esm.headers
    assert httpx.get(f"{server.url}/v2/js/other.js").status_code == 404


def test_bundles_run_and_define_ot(tmp_path: pathlib.Path) -> None:
    """The classic bundle defines the global OT talking to its script's server; the ES bundle
    exports the same API. Both run in node (the DOM is only touched when objects are made)."""
    assert NODE, "node is needed (scripts/test installs it for the TypeScript check)"
    sdk = WEB_DIR / "sdk"
    classic = tmp_path / "opentok.js"
    classic.write_text(bundle(sdk / "ot" / "classic.js", "iife", root=sdk))
    esm = tmp_path / "opentok.mjs"
    esm.write_text(bundle(sdk / "opentok.js", "esm", root=sdk))
    script = f"""
        globalThis.document = {{currentScript: {{src: "https://salon.example.com:8443/v2/js/opentok.js"}}}};
        require("vm").runInThisContext(require("fs").readFileSync({json.dumps(str(classic))}, "utf8"));
        const session = OT.initSession("key", "2_MX5rZXl-fg");
        import({json.dumps(esm.as_uri())}).then((m) => console.log(JSON.stringify({{
            classic: Object.keys(OT).sort(), module: Object.keys(m.default).sort(), same: m.OT === m.default,
            url: session._s.url, sessionId: session.sessionId, isSession: session instanceof OT.Session,
        }})));
    """
    out = subprocess.run([str(NODE), "-e", script], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["classic"] == result["module"] and result["same"] is True
    expected = {"initSession", "initPublisher", "checkSystemRequirements", "on", "off", "once"}
    assert expected <= set(result["classic"])
    assert result["url"] == "https://salon.example.com:8443"  # the script's server, not the page's
    assert result["sessionId"] == "2_MX5rZXl-fg" and result["isSession"] is True


def test_the_bundler_refuses_what_it_cannot_bundle(tmp_path: pathlib.Path) -> None:
    cases = {
        "export let counter = 0;\n": "cannot bundle",
        'import { a } from "https://cdn.example.com/x.js";\n': "only relative imports",
        'import { a } from "./missing.js";\n': "does not exist",
        "export * from './b.js';\n": "cannot bundle",
        'import { a } from "./b.js";\nexport const x = a;\n': "import cycle",
        "export const url = import.meta.url;\n": "import.meta",
    }
    (tmp_path / "b.js").write_text('import { x } from "./a.js";\nexport const a = 1;\n')
    for source, message in cases.items():
        (tmp_path / "a.js").write_text(source)
        with pytest.raises(BundleError, match=message):
            bundle(tmp_path / "a.js", "iife")
