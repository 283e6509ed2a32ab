/**
 * The YAML library behind one module that is imported on demand (`await import(...)`), so
 * commands that read no YAML never load it (start-up, issue 10). A local module rather than a
 * dynamic import of the npm package itself: bundled, a CommonJS package's named exports are
 * reachable through a static import only.
 *
 * @module
 */
export { parse, stringify } from "yaml";
