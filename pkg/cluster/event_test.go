package cluster

import (
	"reflect"
	"testing"
)

// TestCommandsCarryTheirRequest: the driver steps a command it must answer only through
// WithRequest, so a WithRequest that loses the id would leave its caller without a Reply.
func TestCommandsCarryTheirRequest(t *testing.T) {
	for _, cmd := range []Command{Stop{Immediate: true}, Scale{Delta: 1}, Refork{}, Reload{}, Restart{KeepWorkers: true}} {
		got := reflect.ValueOf(cmd.WithRequest(7))
		if got.Type() != reflect.TypeOf(cmd) {
			t.Errorf("%T.WithRequest returned a %s", cmd, got.Type())
			continue
		}
		if id := got.FieldByName("Request").Interface().(RequestID); id != 7 {
			t.Errorf("%T.WithRequest(7) carries Request %d", cmd, id)
		}
		want := reflect.ValueOf(cmd)
		for i := range want.NumField() {
			if f := want.Type().Field(i); f.Name != "Request" && !reflect.DeepEqual(got.Field(i).Interface(), want.Field(i).Interface()) {
				t.Errorf("%T.WithRequest changed %s", cmd, f.Name)
			}
		}
	}
}
