/**
 * The completion scripts of `otherix completion bash|zsh|fish`. Each embeds the command tree
 * ({@link completionTree}) as `case`/`switch` tables, so commands and flags complete without
 * running the CLI; only live resource names run `otherix __complete KIND` (silent, short
 * timeout). zsh reuses the bash functions through zsh's `bashcompinit` (hence no variable
 * named `path`: zsh ties it to `PATH`).
 *
 * The walk over the words typed so far is the same in both languages: a known subcommand
 * extends the path, a flag that takes a value skips that value, anything else counts as a
 * positional argument. The word under the cursor then completes to: the value of the flag
 * before it, else flags (when it starts with `-`), else subcommands, else the command's first
 * argument (only while no positional argument was typed).
 *
 * @module
 */
import type { CompletionNode, ValueCompletion } from "./tree.ts";

/** Shells `otherix completion` writes scripts for. */
export const SHELLS = ["bash", "zsh", "fish"] as const;
/** A supported shell. */
export type Shell = typeof SHELLS[number];

/** The script for `shell` over `tree` (from {@link completionTree}). */
export function completionScript(shell: Shell, tree: CompletionNode[]): string {
  switch (shell) {
    case "bash":
      return "# otherix bash completion: source <(otherix completion bash)\n" + bashBody(tree);
    case "zsh":
      return "#compdef otherix\n# otherix zsh completion: source <(otherix completion zsh)\n" +
        "(( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }\n" +
        "autoload -Uz bashcompinit && bashcompinit\n" + bashBody(tree);
    case "fish":
      return fishScript(tree);
  }
}

/** `w:word word` (fixed words), `r:kind` (live names), `n` (free text). */
function spec(v: ValueCompletion): string {
  if (v.kind === "words") return `w:${v.words.join(" ")}`;
  return v.kind === "resource" ? `r:${v.resource}` : "n";
}

/** Single-quoted for sh and fish (our words never contain a quote; escaped anyway). */
function q(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

function bashCase(fn: string, rows: [string[], string][]): string {
  const arms = rows.filter(([, out]) => out !== "")
    .map(([keys, out]) => `    ${keys.map(q).join("|")}) echo ${q(out)} ;;`);
  return `${fn}() {\n  case "$1" in\n${arms.join("\n")}\n  esac\n}\n`;
}

function bashBody(tree: CompletionNode[]): string {
  return [
    bashCase("_otherix_subs", tree.map((n) => [[n.path], n.subcommands.join(" ")])),
    bashCase("_otherix_flags", tree.map((n) => [[n.path], n.flags.join(" ")])),
    bashCase(
      "_otherix_value",
      tree.flatMap((n) =>
        Object.entries(n.values).map(([f, v]): [string[], string] => [[`${n.path}|${f}`], spec(v)])
      ),
    ),
    bashCase("_otherix_arg", tree.map((n) => [[n.path], spec(n.argument)])),
    `_otherix_spec() {
  case "$1" in
    w:*) COMPREPLY=($(compgen -W "\${1#w:}" -- "$cur")) ;;
    r:*) COMPREPLY=($(compgen -W "$(command otherix __complete "\${1#r:}" 2>/dev/null)" -- "$cur")) ;;
  esac
}
_otherix() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmdpath="" want="" args=0 i w v
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in
      --*=*) ;;
      -*)
        v="$(_otherix_value "$cmdpath|$w")"
        if [[ -n "$v" ]]; then
          if ((i + 1 == COMP_CWORD)); then want="$v"; fi
          ((i++))
        fi ;;
      *)
        if [[ " $(_otherix_subs "$cmdpath") " == *" $w "* ]]; then
          cmdpath="\${cmdpath:+$cmdpath }$w"
        else
          ((args++))
        fi ;;
    esac
  done
  if [[ -n "$want" ]]; then _otherix_spec "$want"; return 0; fi
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_otherix_flags "$cmdpath")" -- "$cur"))
    return 0
  fi
  local subs
  subs="$(_otherix_subs "$cmdpath")"
  if [[ -n "$subs" ]]; then COMPREPLY=($(compgen -W "$subs" -- "$cur")); return 0; fi
  if ((args == 0)); then _otherix_spec "$(_otherix_arg "$cmdpath")"; fi
  return 0
}
complete -F _otherix otherix
`,
  ].join("");
}

function fishSwitch(fn: string, rows: [string[], string[]][]): string {
  const arms = rows.filter(([, out]) => out.length > 0)
    .map(([keys, out]) =>
      `    case ${keys.map(q).join(" ")}\n      printf '%s\\n' ${out.map(q).join(" ")}`
    );
  return `function ${fn}\n  switch "$argv[1]"\n${arms.join("\n")}\n  end\nend\n`;
}

function fishScript(tree: CompletionNode[]): string {
  return [
    "# otherix fish completion: otherix completion fish | source\n",
    fishSwitch("__otherix_subs", tree.map((n) => [[n.path], n.subcommands])),
    fishSwitch("__otherix_flags", tree.map((n) => [[n.path], n.flags])),
    fishSwitch(
      "__otherix_value",
      tree.flatMap((n) =>
        Object.entries(n.values).map((
          [f, v],
        ): [string[], string[]] => [[`${n.path}|${f}`], [spec(v)]])
      ),
    ),
    fishSwitch("__otherix_arg", tree.map((n) => [[n.path], [spec(n.argument)]])),
    `function __otherix_spec
  switch "$argv[1]"
    case 'w:*'
      string split ' ' -- (string sub -s 3 -- "$argv[1]")
    case 'r:*'
      command otherix __complete (string sub -s 3 -- "$argv[1]") 2>/dev/null
  end
end
function __otherix_complete
  set -l words (commandline -opc)
  set -l cur (commandline -ct)
  set -l cmdpath ''
  set -l want ''
  set -l args 0
  set -l n (count $words)
  set -l i 2
  while test $i -le $n
    set -l w $words[$i]
    if string match -q -- '--*=*' $w
    else if string match -q -- '-*' $w
      set -l v (__otherix_value "$cmdpath|$w")
      if test -n "$v"
        test $i -eq $n; and set want $v
        set i (math $i + 1)
      end
    else if contains -- $w (__otherix_subs "$cmdpath")
      set cmdpath (string trim -- "$cmdpath $w")
    else
      set args (math $args + 1)
    end
    set i (math $i + 1)
  end
  if test -n "$want"
    __otherix_spec $want
    return
  end
  if string match -q -- '-*' "$cur"
    __otherix_flags "$cmdpath"
    return
  end
  set -l subs (__otherix_subs "$cmdpath")
  if test (count $subs) -gt 0
    printf '%s\\n' $subs
    return
  end
  test $args -eq 0; and __otherix_spec (__otherix_arg "$cmdpath")
end
complete -c otherix -f -a '(__otherix_complete)'
`,
  ].join("");
}
