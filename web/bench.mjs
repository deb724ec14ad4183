// Runs one of the page's benchmarks (`?bench=train` or `?bench=decode`) in headless Chromium
// and prints what the page reports: the same measurement as `cinder bench train --workload
// tiny` or `cinder bench decode --model smollm2`, inside the browser.
//
//   node web/bench.mjs SITE_DIR train|decode [cpu|webgpu]
//
// SITE_DIR is the built site (scripts/web.sh build). With webgpu, Chromium offers its WebGPU
// adapter (see web/tests/page.mjs for the flags); with cpu (the default) it offers none.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const [siteDir, bench, backend = "cpu"] = process.argv.slice(2);
if (!siteDir || !["train", "decode"].includes(bench) || !["cpu", "webgpu"].includes(backend)) {
  console.error("usage: node web/bench.mjs SITE_DIR train|decode [cpu|webgpu]");
  process.exit(2);
}
const root = path.resolve(siteDir);
const server = createServer(async (req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  const file = path.join(root, decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
  if (!file.startsWith(root)) {
    res.writeHead(403).end();
    return;
  }
  try {
    const body = await readFile(file);
    const type = file.endsWith(".wasm") ? "application/wasm" : file.endsWith(".js") ? "text/javascript" : undefined;
    res.writeHead(200, type ? { "content-type": type } : {});
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const args = ["--headless=new", "--no-sandbox", "--disable-background-networking"];
if (backend === "webgpu") {
  args.push("--enable-unsafe-webgpu", "--enable-features=Vulkan,VulkanFromANGLE,DefaultANGLEVulkan", "--use-angle=vulkan");
}
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args });
const page = await browser.newPage();
let code = 1;
const done = new Promise((resolve) => {
  page.on("console", (m) => {
    const text = m.text();
    if (text.startsWith("cinder: bench") || text.startsWith("cinder: backend")) {
      console.log(text.slice("cinder: ".length));
    }
    if (text.startsWith("cinder: bench result:")) {
      code = 0;
      resolve();
    }
    if (m.type() === "error" || m.type() === "warning" && text.includes("bench")) {
      console.log(`page ${m.type()}: ${text.slice(0, 300)}`);
      resolve();
    }
  });
});
const query = `?fresh&bench=${bench}${backend === "cpu" ? "&device=cpu" : ""}`;
await page.goto(`http://127.0.0.1:${server.address().port}/${query}`);
await done;
await browser.close();
server.close();
process.exit(code);
