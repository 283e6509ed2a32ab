# The dev pipeline's `make` names (spec 001 "Running Otherix on macOS for development"). Each
# target only runs the `deno task` of the same name (deno.json); the work is in dev/scripts/.
TARGETS := etcd-reset lima-ensure-one bootstrap-dev build-api seed-dev deploy-dev clean-dev \
	local-dev-start

.PHONY: $(TARGETS)
$(TARGETS):
	deno task $@
