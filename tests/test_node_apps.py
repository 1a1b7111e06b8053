"""Node.js apps read statically (issue 20): Node's resolver over real files of a root
(relative files, node_modules up the tree, package.json main and exports with
conditions and subpath patterns, scoped packages, global folders), builtins skipped,
a package shipped whole, a `.node` addon with its ELF closure; what nothing resolves
named. The image of a real node on Debian is proven in test_debian_apps.py."""

from __future__ import annotations

import json
from pathlib import Path

from minify.plan.node import command_line, node_needs
from minify.root import Root
from tests.conftest import Builder


def _write(top: Path, files: dict[str, str | bytes]) -> None:
    for name, data in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)


APP = """
const fs = require('fs');                 // a builtin
const path = require('node:path');       // a builtin, prefixed
const { greet } = require('./lib/greet'); // a file, .js added
const conf = require('./conf');           // a folder: its index.json
const cond = require('cond');             // exports with conditions
const deep = require('@scope/pkg/sub/x'); // a scoped package's subpath pattern
const legacy = require('legacy');         // main without exports
const native = require('addon');          // a folder whose main is a .node file
import('./later.mjs');                    // a dynamic import
/* require('commented-out') is not followed */
const gone = require('not-installed');
"""


def test_node_resolution_over_a_real_tree(tmp_path: Path, builder: Builder) -> None:
    top = tmp_path / "root"
    cond = {"exports": {".": {"types": "./x.d.ts", "import": "./esm/index.mjs", "require": "./cjs/index.js"}}}
    scoped = {"name": "@scope/pkg", "exports": {"./sub/*": {"node": "./dist/*.js"}}}
    _write(
        top,
        {
            "srv/app/server.js": APP,
            "srv/app/package.json": json.dumps({"type": "commonjs"}),
            "srv/app/lib/greet.js": "exports.greet = () => require('../util/shout');",
            "srv/app/util/shout.js": "module.exports = 1;",
            "srv/app/conf/index.json": "{}",
            "srv/app/later.mjs": "import legacy from 'legacy'; export default legacy;",
            "srv/node_modules/cond/package.json": json.dumps(cond),
            "srv/node_modules/cond/cjs/index.js": "module.exports = require('./helper');",
            "srv/node_modules/cond/cjs/helper.js": "module.exports = 2;",
            "srv/node_modules/cond/esm/index.mjs": "export default 3;",
            "srv/node_modules/cond/README.md": "shipped with its package",
            "srv/app/node_modules/@scope/pkg/package.json": json.dumps(scoped),
            "srv/app/node_modules/@scope/pkg/dist/x.js": "module.exports = 4;",
            "usr/share/nodejs/legacy/package.json": json.dumps({"main": "lib/main"}),
            "usr/share/nodejs/legacy/lib/main.js": "module.exports = require('inner');",
            "usr/share/nodejs/inner/index.js": "module.exports = 5;",
            "usr/share/nodejs/unused/index.js": "module.exports = 6;",
            "srv/app/node_modules/addon/package.json": json.dumps({"main": "build/addon.node"}),
        },
    )
    builder.lib(top / "srv/app/node_modules/addon/build/addon.node", "addon", src="lib.c")
    (top / "usr/bin").mkdir(parents=True)
    (top / "usr/bin/node").write_bytes(b"\x7fELF not a real node, never run")
    needs = node_needs(Root(str(top)), "/usr/bin/node", ["/srv/app/server.js"], [], env={}, binaries=[])
    files = set(needs.files)
    for want in (
        "/srv/app/server.js",
        "/srv/app/package.json",  # the package scope: Node reads its "type"
        "/srv/app/lib/greet.js",
        "/srv/app/util/shout.js",
        "/srv/app/conf/index.json",
        "/srv/app/later.mjs",
        "/srv/node_modules/cond",  # a package ships whole
        "/srv/node_modules/cond/cjs/index.js",
        "/srv/node_modules/cond/esm/index.mjs",  # import and require both
        "/srv/node_modules/cond/cjs/helper.js",
        "/srv/app/node_modules/@scope/pkg/dist/x.js",  # ./sub/* -> ./dist/*.js
        "/usr/share/nodejs/legacy/lib/main.js",
        "/usr/share/nodejs/inner/index.js",
        "/srv/app/node_modules/addon/build/addon.node",
    ):
        assert want in files, want
    assert "/usr/share/nodejs/unused" not in files and "/usr/share/nodejs/unused/index.js" not in files
    assert not any("commented-out" in f for f in files)
    assert needs.addons == ("/srv/app/node_modules/addon/build/addon.node",)
    assert any("not-installed (/srv/app/server.js)" in note for note in needs.notes)
    assert not any("fs (" in note or "node:path" in note for note in needs.notes)


def test_node_command_lines() -> None:
    assert command_line(("node", "server.js", "--port", "1"), "/app") == (["/app/server.js"], [])
    assert command_line(("node", "--max-old-space-size", "512", "-r", "dotenv/config", "/x.js"), "/") == (
        ["/x.js"],
        ["dotenv/config"],
    )
    assert command_line(("node", "-e", "console.log(1)"), "/app") == ([], [])
    assert command_line(("nodejs", "--import=./boot.mjs", "main.mjs"), "/srv") == (["/srv/main.mjs"], ["./boot.mjs"])
