/**
 * Failpoints for crash tests (the etcd `gofail` idea): `OTHERIX_FAILPOINTS=name[,name…]`
 * makes the control plane exit abruptly (status 137, no shutdown code runs, like `kill -9`)
 * the first time execution reaches {@link failpoint}`(name)`. Tests use them to kill the
 * control plane at every step of a task and check that the cluster converges after restart.
 * Unset in production: a lookup in an empty set.
 *
 * Names used: `task.before_dispatch`, `task.after_dispatch`, `task.before_finish`,
 * `vm.create.after_record`.
 *
 * @module
 */

const armed = new Set(
  (Deno.env.get("OTHERIX_FAILPOINTS") ?? "").split(",").map((s) => s.trim()).filter(Boolean),
);

/** Crashes the process here when failpoint `name` is armed (see the module doc). */
export function failpoint(name: string): void {
  if (!armed.has(name)) return;
  console.error(JSON.stringify({ level: "error", msg: "failpoint hit: exiting", failpoint: name }));
  Deno.exit(137);
}
