package main
import (
	_ "github.com/spf13/cobra"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/joho/godotenv"
	_ "github.com/sirupsen/logrus"
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "gopkg.in/yaml.v3"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "go.uber.org/goleak"
	_ "modernc.org/sqlite"
	_ "github.com/jackc/pgx/v5"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/google/shlex"
)
func main(){}
