/**
 * VM disks: a qcow2 overlay per VM backed by the cached image (`qemu-img`).
 *
 * @module
 */
import { ApiError } from "../shared/errors.ts";

/** What `qemu-img info` says about a cached image. */
export interface ImageInfo {
  /** Only `raw` and `qcow2` images are accepted. */
  format: "raw" | "qcow2";
  /** Guest-visible size, bytes. */
  virtualSize: number;
}

/** Bytes per GiB. */
export const GIB = 1024 ** 3;

/** Runs a tool, returning stdout; throws `code` with the tool's stderr on failure. */
async function run(
  binary: string,
  args: string[],
  code: "vm_create_failed" | "image_unavailable",
): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(binary, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    throw new ApiError(code, `cannot run ${binary}: ${(e as Error).message}`);
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new ApiError(
      code,
      `${binary} ${args[0]} failed (exit code ${out.code})${err ? `: ${err}` : ""}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * Inspects an image with `qemu-img info --output=json --force-share`.
 *
 * @throws ApiError `vm_create_failed` when qemu-img fails, the format is neither raw nor
 *   qcow2, or a qcow2 image names a backing file or an external data file of its own
 *   (refused: a downloaded image must not make QEMU open arbitrary host files)
 */
export async function imageInfo(qemuImg: string, path: string): Promise<ImageInfo> {
  const text = await run(
    qemuImg,
    ["info", "--output=json", "--force-share", path],
    "vm_create_failed",
  );
  let info: Record<string, unknown>;
  try {
    info = JSON.parse(text);
  } catch {
    throw new ApiError("vm_create_failed", `qemu-img info ${path}: unparsable output`);
  }
  const format = info["format"];
  const size = info["virtual-size"];
  if (format !== "raw" && format !== "qcow2") {
    throw new ApiError(
      "vm_create_failed",
      `image ${path}: unsupported format ${JSON.stringify(format)} (raw or qcow2 only)`,
    );
  }
  if (info["backing-filename"] !== undefined) {
    throw new ApiError("vm_create_failed", `image ${path}: images with a backing file are refused`);
  }
  const specific = info["format-specific"] as { data?: Record<string, unknown> } | undefined;
  if (specific?.data?.["data-file"] !== undefined) {
    throw new ApiError(
      "vm_create_failed",
      `image ${path}: images with an external data file are refused`,
    );
  }
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw new ApiError("vm_create_failed", `image ${path}: no virtual size`);
  }
  return { format, virtualSize: size };
}

/** The overlay size: `diskGib` GiB, never smaller than the image (bytes). */
export function overlaySize(diskGib: number, imageVirtualSize: number): number {
  return Math.max(diskGib * GIB, imageVirtualSize);
}

/**
 * Creates `dest` as a qcow2 overlay of `backing` (absolute path):
 * `qemu-img create -f qcow2 -F <fmt> -b <backing> <dest> <max(diskGib GiB, virtual size)>`.
 *
 * @throws ApiError `vm_create_failed` with qemu-img's stderr
 */
export async function createOverlay(
  qemuImg: string,
  backing: string,
  info: ImageInfo,
  dest: string,
  diskGib: number,
): Promise<void> {
  if (!backing.startsWith("/")) throw new Error(`backing path must be absolute: ${backing}`);
  await run(
    qemuImg,
    [
      "create",
      "-f",
      "qcow2",
      "-F",
      info.format,
      "-b",
      backing,
      dest,
      String(overlaySize(diskGib, info.virtualSize)),
    ],
    "vm_create_failed",
  );
}
