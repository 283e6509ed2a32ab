/**
 * Parses Prometheus text exposition with the official Prometheus client library's parser
 * (`prometheus_client.parser`, Debian `python3-prometheus-client`, installed by
 * scripts/setup.sh for the tests), so metrics are checked by a real parser, not by our own.
 *
 * @module
 */

/** One sample: metric name (with `_bucket`/`_count`/`_sum` suffixes), labels, value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family: name, type and samples. */
export interface Family {
  name: string;
  type: string;
  samples: Sample[];
}

const SCRIPT = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
`;

/**
 * The families of `text`, by name (the family name without `_total` for counters, as the
 * parser gives it).
 *
 * @throws Error with the parser's message when the text is not valid exposition format
 */
export async function parsePrometheus(text: string): Promise<Map<string, Family>> {
  const child = new Deno.Command("/usr/bin/python3", {
    args: ["-c", SCRIPT],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const out = await child.output();
  if (!out.success) {
    throw new Error(`prometheus parser: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  const families = JSON.parse(new TextDecoder().decode(out.stdout)) as Family[];
  return new Map(families.map((f) => [f.name, f]));
}

/** The value of the first sample of `f` named `name` whose labels include `labels`. */
export function sampleValue(
  families: Map<string, Family>,
  family: string,
  labels: Record<string, string> = {},
  name = family,
): number | undefined {
  return families.get(family)?.samples.find((s) =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  )?.value;
}
