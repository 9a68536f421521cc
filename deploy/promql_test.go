package deploy_test

import (
	"fmt"
	"strings"
)

// selector is a vector selector of a PromQL expression: a metric name and
// the text of its label matchers (without the braces).
type selector struct {
	name     string
	matchers string
}

// promqlWords are the identifiers of PromQL that are not metric names when
// they are not followed by '(' (keywords, binary operators, aggregation
// operators whose grouping comes first: sum by (x) (...)).
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true,
	"offset": true, "bool": true, "inf": true, "nan": true, "start": true, "end": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// grouping are the keywords whose parenthesised list holds label names.
var grouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// selectors returns the vector selectors of a PromQL expression, in order.
// It is a tokenizer, not a parser: it skips strings, comments, label
// matchers ({...}, kept as the selector's matchers), ranges and subqueries
// ([...]), numbers and durations, Grafana variables ($x, ${x}), function
// and aggregation names (an identifier followed by '('), keywords, and the
// label lists of by, without, on, ignoring, group_left and group_right.
// Every other identifier is a metric name.
func selectors(expr string) ([]selector, error) {
	var out []selector
	s := expr
	i := 0
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	skipSpace := func(j int) int {
		for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
			j++
		}
		return j
	}
	// skipString returns the index past the string literal starting at j.
	skipString := func(j int) (int, error) {
		q := s[j]
		for k := j + 1; k < len(s); k++ {
			switch {
			case s[k] == '\\' && q != '`':
				k++
			case s[k] == q:
				return k + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string at %d in %q", j, expr)
	}
	// closing returns the index past the bracket closing the one at j,
	// skipping strings.
	closing := func(j int) (int, error) {
		open := s[j]
		shut := map[byte]byte{'(': ')', '[': ']', '{': '}'}[open]
		depth := 0
		for k := j; k < len(s); {
			switch c := s[k]; {
			case c == '"' || c == '\'' || c == '`':
				n, err := skipString(k)
				if err != nil {
					return 0, err
				}
				k = n
				continue
			case c == open:
				depth++
			case c == shut:
				depth--
				if depth == 0 {
					return k + 1, nil
				}
			}
			k++
		}
		return 0, fmt.Errorf("unbalanced %q at %d in %q", open, j, expr)
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			n, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = n
		case c == '{':
			// A selector without a name ({__name__="x"}): not used here.
			n, err := closing(i)
			if err != nil {
				return nil, err
			}
			out = append(out, selector{matchers: s[i+1 : n-1]})
			i = n
		case c == '[':
			n, err := closing(i)
			if err != nil {
				return nil, err
			}
			i = n
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				n, err := closing(i)
				if err != nil {
					return nil, err
				}
				i = n
			} else {
				for i < len(s) && isIdent(s[i]) {
					i++
				}
			}
		case isDigit(c) || c == '.' && i+1 < len(s) && isDigit(s[i+1]):
			// A number (1e9, 0.5, 0x1f) or a duration (5m, 1h30m).
			start := i
			for i < len(s) {
				d := s[i]
				exponent := (d == '+' || d == '-') && (s[i-1] == 'e' || s[i-1] == 'E') && !strings.HasPrefix(s[start:], "0x")
				if !exponent && (!isIdent(d) || d == ':') && d != '.' {
					break
				}
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			next := skipSpace(j)
			switch {
			case grouping[word] && next < len(s) && s[next] == '(':
				n, err := closing(next)
				if err != nil {
					return nil, err
				}
				i = n
			case next < len(s) && s[next] == '(':
				i = j // a function or an aggregation
			case promqlWords[word]:
				i = j
			default:
				sel := selector{name: word}
				i = j
				if next < len(s) && s[next] == '{' {
					n, err := closing(next)
					if err != nil {
						return nil, err
					}
					sel.matchers = s[next+1 : n-1]
					i = n
				}
				out = append(out, sel)
			}
		default:
			i++
		}
	}
	return out, nil
}
