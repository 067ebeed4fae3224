package master

import (
	"errors"

	"github.com/baton-pm/baton/internal/proc"
)

func (o *osProcesses) StartTemplate(spec proc.Spec, preload []string) (int, process, templateConn, error) {
	return 0, nil, nil, errors.New("preload: not built yet")
}

func (o *osProcesses) AdoptForked(pid int, req forkRequest) (process, error) {
	return nil, errors.New("preload: not built yet")
}
