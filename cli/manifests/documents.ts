/**
 * Reading manifest files (spec 001 "Declarative manifests"): multi-document YAML, each
 * non-empty document checked against the manifest envelope and its kind's spec schema
 * (shared/api/manifests.ts). Every error names the document — its file, its 1-based index in
 * that file and, when readable, its kind and `metadata.name` — and the field:
 *
 * `api_error: validation_failed: cluster.yaml document 2 (VM demo-vm): spec.memoryMB: …`
 *
 * (the same code and shape the control plane uses for a bad request, so a script handles a
 * bad manifest alike whether the CLI or the server caught it).
 *
 * @module
 */
import { parseAllDocuments } from "yaml";
import type { z } from "zod";
import {
  type Manifest,
  MANIFEST_SPEC_SCHEMAS,
  ManifestEnvelopeSchema,
  type ManifestKind,
} from "../../shared/api/manifests.ts";
import { ApiCallError, UsageError } from "../errors.ts";
import type { Io } from "../io.ts";

/** Where a document came from. */
export interface ManifestSource {
  /** The file as given to `-f` (`-` for stdin). */
  file: string;
  /** 1-based position among the file's documents (empty documents count too). */
  index: number;
}

/** A checked manifest document and where it came from. */
export interface ManifestDoc<M extends Manifest = Manifest> {
  source: ManifestSource;
  manifest: M;
}

/** `cluster.yaml document 2 (VM demo-vm)`: how errors and prompts name a document. */
export function docLabel(source: ManifestSource, kind?: string, name?: string): string {
  const what = [kind, name].filter((x) => x !== undefined && x !== "").join(" ");
  return `${source.file} document ${source.index}${what ? ` (${what})` : ""}`;
}

/** The label of a checked document. */
export function labelOf(doc: ManifestDoc): string {
  return docLabel(doc.source, doc.manifest.kind, doc.manifest.metadata.name);
}

/**
 * A manifest refused before anything was sent (or by the server for one document): rendered
 * as `api_error: <code>: <document>: <field>: <message>`. `details` carries `file`,
 * `document` (index), `kind`, `name` and `field` for programmatic use.
 */
export class ManifestError extends ApiCallError {
  constructor(
    code: string,
    readonly source: ManifestSource,
    readonly kind: string | undefined,
    readonly docName: string | undefined,
    readonly field: string | null,
    detail: string,
    details: Record<string, unknown> = {},
  ) {
    super(
      code,
      `${docLabel(source, kind, docName)}: ${field ? `${field}: ` : ""}${detail}`,
      {
        ...details,
        file: source.file,
        document: source.index,
        kind: kind ?? null,
        name: docName ?? null,
        field,
      },
    );
    this.name = "ManifestError";
  }

  /** A `validation_failed` error for checked document `doc`. */
  static invalid(doc: ManifestDoc, field: string | null, detail: string): ManifestError {
    return new ManifestError(
      "validation_failed",
      doc.source,
      doc.manifest.kind,
      doc.manifest.metadata.name,
      field,
      detail,
    );
  }
}

/** `a.b.0.c` from a zod issue path. */
function pathText(path: readonly PropertyKey[]): string {
  return path.map(String).join(".");
}

/** The first issue of a zod error as `(field, message)`, fields prefixed with `prefix`. */
function firstIssue(error: z.ZodError, prefix: string): [string, string] {
  const issue = error.issues[0];
  const field = pathText([...(prefix ? [prefix] : []), ...issue.path]);
  if (issue.code === "unrecognized_keys") {
    const keys = (issue as { keys: string[] }).keys;
    const at = field ? `${field}.` : "";
    return [
      `${at}${keys[0]}`,
      "unknown field" + (keys.length > 1 ? ` (and ${keys.slice(1)})` : ""),
    ];
  }
  return [field, issue.message];
}

/**
 * Parses the text of one manifest file into checked documents (empty documents, e.g. after a
 * trailing `---`, are skipped).
 *
 * @throws ManifestError `validation_failed` for the first document that is not YAML, not a
 *   mapping, or does not match its schema
 */
export function parseManifestText(text: string, file: string): ManifestDoc[] {
  const docs = parseAllDocuments(text);
  const yamlDocs = Array.isArray(docs) ? docs : [docs];
  const out: ManifestDoc[] = [];
  yamlDocs.forEach((yd, i) => {
    const source = { file, index: i + 1 };
    const err = yd.errors[0];
    if (err) {
      const line = err.linePos?.[0]?.line;
      const what = err.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
      throw new ManifestError(
        "validation_failed",
        source,
        undefined,
        undefined,
        null,
        `not valid YAML${line ? ` (line ${line})` : ""}: ${what}`,
      );
    }
    const value = yd.toJS({ maxAliasCount: 100 });
    if (value === null || value === undefined) return;
    out.push(checkDocument(value, source));
  });
  return out;
}

/**
 * Checks one decoded document: the envelope (`apiVersion`, `kind`, `metadata.name`, `spec`),
 * then the kind's spec schema.
 *
 * @throws ManifestError `validation_failed` naming the document and the first bad field
 */
export function checkDocument(value: unknown, source: ManifestSource): ManifestDoc {
  const obj = (typeof value === "object" && value !== null && !Array.isArray(value))
    ? value as Record<string, unknown>
    : null;
  const kindRaw = typeof obj?.kind === "string" ? obj.kind : undefined;
  const md = obj?.metadata as Record<string, unknown> | undefined;
  const nameRaw = typeof md?.name === "string" ? md.name : undefined;
  const fail = (field: string | null, message: string) =>
    new ManifestError("validation_failed", source, kindRaw, nameRaw, field, message);
  if (!obj) throw fail(null, "must be a mapping with apiVersion, kind, metadata and spec");
  const env = ManifestEnvelopeSchema.safeParse(obj);
  if (!env.success) throw fail(...firstIssue(env.error, ""));
  const kind = env.data.kind as ManifestKind;
  const spec = MANIFEST_SPEC_SCHEMAS[kind].safeParse(env.data.spec);
  if (!spec.success) throw fail(...firstIssue(spec.error, "spec"));
  return {
    source,
    manifest: { ...env.data, kind, spec: spec.data } as Manifest,
  };
}

/**
 * Reads and parses every `-f` file in order (`-` reads stdin).
 *
 * @throws UsageError when no file is given or one cannot be read; ManifestError for a bad
 *   document; UsageError when the files hold no document at all
 */
export async function readManifests(io: Io, files: string[]): Promise<ManifestDoc[]> {
  if (files.length === 0) {
    throw new UsageError("no manifest given: pass -f FILE (or -f - for stdin)");
  }
  const out: ManifestDoc[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = await io.readTextFile(file === "-" ? "/dev/stdin" : file);
    } catch (e) {
      throw new UsageError(`cannot read manifest ${file}: ${(e as Error).message}`);
    }
    out.push(...parseManifestText(text, file));
  }
  if (out.length === 0) throw new UsageError(`no manifest documents in ${files.join(", ")}`);
  return out;
}
