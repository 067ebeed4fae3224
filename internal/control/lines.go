package control

import (
	"bufio"
	"bytes"
	"errors"
)

// errLineTooLong is returned by readLine for a line over its limit.
var errLineTooLong = errors.New("line too long")

// readLine reads one '\n'-terminated line of at most max bytes (not counting
// the '\n') and returns it with its '\n'. It never holds more than max plus
// one buffer of the reader in memory, however long the line is. At the end
// of the input it returns what it has with io.EOF (nothing, or a last line
// without a '\n').
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		length := len(line) + len(chunk)
		if bytes.HasSuffix(chunk, []byte{'\n'}) {
			length--
		}
		if length > max {
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}
