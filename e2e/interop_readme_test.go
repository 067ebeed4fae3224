package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The README's table of servers says what the interop matrix tests: the
// same rows in the same order, with the same command lines, baton
// settings, readiness and draining. Only the notes are the README's own.

// readmeServerColumns are the table's header cells.
var readmeServerColumns = []string{"server", "command line", "baton settings", "readiness", "drains in-flight on stop", "notes"}

func TestInteropMatrixIsTheREADMETable(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := readmeServerTable(string(data))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	matrix := interopMatrix()
	for i, s := range matrix {
		want := s.readmeCells()
		if i >= len(rows) {
			t.Errorf("README.md's server table has no row for %q; want | %s | ... |", s.name, strings.Join(want, " | "))
			continue
		}
		got := rows[i]
		for c, cell := range want {
			if got.cells[c] != cell {
				t.Errorf("README.md:%d: row %d, %s: %q; the matrix (e2e/interop_matrix_test.go) says %q",
					got.line, i+1, readmeServerColumns[c], got.cells[c], cell)
			}
		}
		if got.cells[len(readmeServerColumns)-1] == "" {
			t.Errorf("README.md:%d: %s has no notes", got.line, s.name)
		}
	}
	for _, extra := range rows[min(len(matrix), len(rows)):] {
		t.Errorf("README.md:%d: %q is not in the matrix (e2e/interop_matrix_test.go)", extra.line, extra.cells[0])
	}
}

// readmeCells are the row's cells as the README writes them, all but the
// notes.
func (s interopServer) readmeCells() []string {
	settings := ""
	if len(s.settings) > 0 {
		settings = "`" + strings.Join(s.settings, " ") + "`"
	}
	drains := "no"
	if s.drains {
		drains = "yes"
	}
	return []string{s.name, "`" + strings.Join(s.command, " ") + "`", settings, "`" + s.ready + "`", drains}
}

// readmeRow is one row of the README's server table.
type readmeRow struct {
	line  int // 1-based
	cells []string
}

// readmeServerTable finds the table whose header is readmeServerColumns
// and returns its rows, each with one cell per column.
func readmeServerTable(readme string) ([]readmeRow, error) {
	lines := strings.Split(readme, "\n")
	header := "| " + strings.Join(readmeServerColumns, " | ") + " |"
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == header {
			if start >= 0 {
				return nil, fmt.Errorf("two server tables, at lines %d and %d", start+1, i+1)
			}
			start = i
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("no server table: no line %q", header)
	}
	var rows []readmeRow
	for i := start + 2; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		cells := strings.Split(strings.TrimSpace(lines[i]), "|")
		cells = cells[1 : len(cells)-1] // before the first and after the last |
		if len(cells) != len(readmeServerColumns) {
			return nil, fmt.Errorf("line %d has %d cells, want %d (no | inside a cell)", i+1, len(cells), len(readmeServerColumns))
		}
		for c := range cells {
			cells[c] = strings.TrimSpace(cells[c])
		}
		rows = append(rows, readmeRow{line: i + 1, cells: cells})
	}
	return rows, nil
}
