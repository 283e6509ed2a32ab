/**
 * A tiny loopback HTTP file server for offline demos: serves the files of one directory
 * (no listing, no path traversal) so the agent can "download" the test image.
 *
 * Usage: `deno run --allow-net=127.0.0.1 --allow-read=DIR scripts/serve_images.ts DIR PORT`
 *
 * @module
 */
import { basename, join } from "node:path";

if (import.meta.main) {
  const [dir, portArg] = Deno.args;
  if (!dir || !portArg) {
    console.error("usage: serve_images.ts DIR PORT");
    Deno.exit(2);
  }
  Deno.serve({ hostname: "127.0.0.1", port: Number(portArg) }, async (req) => {
    const name = decodeURIComponent(new URL(req.url).pathname.slice(1));
    if (!name || name !== basename(name) || name.startsWith(".")) {
      return new Response("not found\n", { status: 404 });
    }
    try {
      const file = await Deno.open(join(dir, name));
      const { size } = await file.stat();
      return new Response(file.readable, { headers: { "content-length": String(size) } });
    } catch {
      return new Response("not found\n", { status: 404 });
    }
  });
}
