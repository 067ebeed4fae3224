//go:build !race

package e2e

// raceEnabled is true when the tests themselves are built with -race; the
// baton binary under test is then built with -race too.
const raceEnabled = false
