package kubernetes_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestDocCommands checks every `supervisor` command line in the code
// blocks of docs/deploy.md as the manifests' are checked: only flags its
// verb defines, and a line that parses.
func TestDocCommands(t *testing.T) {
	src, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatal(err)
	}
	lines := docCommands(string(src))
	for _, l := range lines {
		_, problems := parseCommandLine(t, l.args)
		for _, p := range problems {
			t.Errorf("%s:%d: supervisor %s: %s", deployDocName, l.line, strings.Join(l.args, " "), p)
		}
	}
	// The page shows at least the CA, an agent, a supervisor and a
	// request: finding fewer means this test no longer reads it.
	verbsSeen := map[string]bool{}
	for _, l := range lines {
		verbsSeen[l.args[0]] = true
	}
	for _, v := range []string{"tls", "agent", "start", "submit", "status"} {
		if !verbsSeen[v] {
			t.Errorf("%s: no `supervisor %s` found in its code blocks", deployDocName, v)
		}
	}
}

// docLine is a `supervisor` command line of a code block: its arguments
// after "supervisor", and the line it starts on.
type docLine struct {
	line int
	args []string
}

// docCommands returns the `supervisor ...` command lines in the fenced
// code blocks of a Markdown page, lines continued with a backslash
// joined; one run through `kubectl exec ... -- supervisor` counts too.
func docCommands(md string) []docLine {
	var out []docLine
	inBlock, start, cont := false, 0, ""
	for i, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inBlock, cont = !inBlock, ""
			continue
		}
		if !inBlock {
			continue
		}
		if cont == "" {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cont += s + " "
			continue
		}
		words := shellWords(cont + line)
		cont = ""
		if i := slices.Index(words, "supervisor"); i >= 0 && (i == 0 || words[i-1] == "--") && len(words) > i+1 {
			out = append(out, docLine{line: start, args: words[i+1:]})
		}
	}
	return out
}

// shellWords splits a shell command line into words: spaces separate
// them, quotes group, a # begins a comment, and the line ends at a
// control operator (&, ;, |).
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord, quote := false, rune(0)
	flush := func() {
		if inWord {
			words = append(words, w.String())
		}
		w.Reset()
		inWord = false
	}
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			flush()
		case r == '#' && !inWord, r == '&', r == ';', r == '|':
			flush()
			return words
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return words
}

func TestShellWords(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{`supervisor submit --prompt "a lighthouse at dusk" --seed 7`, []string{"supervisor", "submit", "--prompt", "a lighthouse at dusk", "--seed", "7"}},
		{`supervisor agent --host hostb  # on hostb`, []string{"supervisor", "agent", "--host", "hostb"}},
		{`kubectl port-forward deploy/x 7070:7070 &`, []string{"kubectl", "port-forward", "deploy/x", "7070:7070"}},
		{`a 'b c'd ""`, []string{"a", "b cd", ""}},
		{`a#b`, []string{"a#b"}},
	}
	for _, tt := range tests {
		if got := shellWords(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("shellWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	got := docCommands("text supervisor start\n```sh\n# comment\nsupervisor agent --host a \\\n  --serve e=1\nkubectl exec d -- supervisor status\n```\nsupervisor x\n")
	want := fmt.Sprint([]docLine{{4, []string{"agent", "--host", "a", "--serve", "e=1"}}, {6, []string{"status"}}})
	if fmt.Sprint(got) != want {
		t.Errorf("docCommands = %v, want %v", got, want)
	}
}
