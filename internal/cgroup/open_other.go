//go:build !linux

package cgroup

// Open fails: cgroups are Linux's.
func Open(opts Options) (*Tree, error) {
	return nil, unavailable("cgroups need Linux")
}
