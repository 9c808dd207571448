// Package logging builds the zap logger; it runs in every process. Each
// writes JSON lines on stderr, which envd-init reads back from its plugins and
// re-logs with the plugin's name.
package logging

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a JSON logger on stderr, and on each of also (envd-init's
// log export); verbose enables debug level.
func New(verbose bool, also ...zapcore.WriteSyncer) *zap.Logger {
	level := zapcore.InfoLevel
	if verbose {
		level = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "timestamp"
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(os.Stderr), level)
	for _, w := range also {
		core = zapcore.NewTee(core, zapcore.NewCore(zapcore.NewJSONEncoder(enc), w, level))
	}
	return zap.New(core, zap.AddCaller())
}
