package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/stemhq/stem"
	"github.com/stemhq/stem/config"
	"github.com/stemhq/stem/control/revoke"
	"github.com/stemhq/stem/engine"
	"github.com/stemhq/stem/logging"
)

func engineOptions(c config.Config) engine.Options {
	return engine.Options{BrokerURL: c.BrokerURL, ResultURL: c.ResultBackendURL, Namespace: c.Namespace, ResultTTL: c.ResultTTL, RedisRequireAOF: c.RedisRequireAOF}
}

// openEngine opens the configured engine once: a broker that does not answer
// is an error (exit 69) naming the redacted URL. With the default broker (a
// SQLite file in the per-user state directory), the directory is created.
// What the engine finds wrong but works with (a Redis without AOF) is not
// reported: short-lived commands stay quiet, `worker run` logs it
// (openEngineRetrying), `worker diagnose --connect` checks it.
func openEngine(ctx context.Context, c config.Config) (*engine.Engine, error) {
	return openEngineWarn(ctx, c, nil)
}

func openEngineWarn(ctx context.Context, c config.Config, warn func(error)) (*engine.Engine, error) {
	if c.BrokerDefaulted {
		dir := filepath.Dir(strings.TrimPrefix(c.BrokerURL, "sqlite://"))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, withCode(ExitConfig, fmt.Errorf("default broker: create the state directory %s: %w (set STEM_BROKER_URL)", dir, err))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	o := engineOptions(c)
	o.Warn = warn
	return engine.Open(ctx, o)
}

// openEngineRetrying opens the engine, retrying with backoff while the
// broker is unavailable, logging each attempt, until ctx ends. A
// configuration error is returned at once.
func openEngineRetrying(ctx context.Context, c config.Config, log logrus.FieldLogger) (*engine.Engine, error) {
	return openRetrying(ctx, log, "broker", c.BrokerURL, func() (*engine.Engine, error) {
		return openEngineWarn(ctx, c, func(err error) { log.WithError(err).Warn("broker") })
	})
}

// openRetrying calls open until it succeeds, backing off from 250ms to
// 10s and logging each failure with what and the redacted URL, until ctx
// ends. A configuration error (exit 78) is returned at once: it does not
// get better by waiting.
func openRetrying[T any](ctx context.Context, log logrus.FieldLogger, what, rawURL string, open func() (T, error)) (T, error) {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		v, err := open()
		if err == nil {
			if attempt > 1 {
				log.WithField(logging.FieldURL, stem.RedactURL(rawURL)).Infof("%s reachable", what)
			}
			return v, nil
		}
		if ExitCode(err) == ExitConfig || ctx.Err() != nil {
			return v, err
		}
		log.WithError(err).WithFields(logrus.Fields{"attempt": attempt, logging.FieldDelay: delay.String()}).Warnf("%s unavailable; retrying", what)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		if delay < 10*time.Second {
			delay *= 2
		}
	}
}

// routeRedisLogs routes the database drivers' own messages (go-redis's
// dial failures, pool and pub/sub reconnects) into the command's logger at
// debug level, instead of the driver printing them to stderr in its own
// format; stem logs every failure that matters itself, with context. The
// drivers' loggers are process-global, so only the CLI (never a library
// package) sets them.
func routeRedisLogs(log logrus.FieldLogger) {
	engine.RouteDriverLogs(log.WithField("component", "go-redis").Debugf)
}

// revokeStoreURL is the revoke store's URL, resolved as openRevokeStore
// does.
func revokeStoreURL(l config.Lookup) string {
	url, _ := engine.ResolveRevokeURL(func(k string) (string, bool) {
		v, _, ok := l.Get(k)
		return v, ok
	})
	return url
}

// openRevokeStore opens the revoke store: STEM_REVOKE_STORE_URL, else
// STEM_RESULT_BACKEND_URL, else STEM_BROKER_URL (flags count as their
// variables), under the deployment's namespace.
func openRevokeStore(ctx context.Context, c config.Config, l config.Lookup, log logrus.FieldLogger) (revoke.Store, error) {
	url, key := engine.ResolveRevokeURL(func(k string) (string, bool) {
		v, _, ok := l.Get(k)
		return v, ok
	})
	if _, from, ok := l.Get(key); ok {
		key = from
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return engine.OpenRevokeStore(ctx, engine.RevokeOptions{
		URL:             url,
		URLKey:          key,
		Namespace:       c.Namespace,
		RedisRequireAOF: c.RedisRequireAOF,
		Warn:            func(err error) { log.WithError(err).Warn("revoke store") },
	})
}
