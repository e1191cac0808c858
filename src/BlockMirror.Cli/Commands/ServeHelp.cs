namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror serve --help</c>: qemu-storage-daemon's <c>--help</c>, cut to the options and forms the daemon
/// takes (each option's value is key=value pairs or JSON; the first key may be left out where QEMU allows it).
/// </summary>
static class ServeHelp
{
    public const string Text = """
        Usage: blockmirror serve [options]
        BlockMirror storage daemon (qemu-storage-daemon 7.2 command line)

          -h, --help             display this help and exit
          -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                                 log the events matching <pattern> (globs with *),
                                 or listed in <file>, whatever the log level; to
                                 <file> instead of stderr with file= (-T help
                                 lists the events)
          -V, --version          output version information and exit
          --log-level trace|debug|info|warning|error|none
                                 what else to log to stderr (default: warning)

          --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
                     [,cache.direct=on|off][,cache.no-flush=on|off]
                     [,read-only=on|off][,auto-read-only=on|off]
                     [,force-share=on|off][,detect-zeroes=on|off|unmap]
                     [,driver specific parameters...]
                                 configure a block node (drivers: file, raw, qcow2,
                                 null-co, blkdebug, ...; see the README)

          --chardev [backend=]socket,id=<id>,path=<path>,server=on,wait=off
          --chardev [backend=]socket,id=<id>,host=<host>,port=<port>,server=on,wait=off
          --chardev [backend=]socket,id=<id>,fd=<fd>,server=on,wait=off
                                 a listening socket for a monitor (only these forms);
                                 <fd> is a descriptor number or the name of a socket
                                 from systemd socket activation (LISTEN_FDNAMES)

          --daemonize            daemonize the process, and have the parent exit
                                 once startup is complete

          --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
                   [,writable=on|off][,description=<text>]
                                 export the specified block node over NBD
                                 (requires --nbd-server)

          --monitor [chardev=]name[,mode=control][,pretty[=on|off]]
                                 configure a QMP monitor

          --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
                       [,tls-creds=<id>][,max-connections=<n>]
          --nbd-server addr.type=unix,addr.path=<path>
                       [,tls-creds=<id>][,max-connections=<n>]
          --nbd-server addr.type=fd,addr.str=<fd>
                       [,tls-creds=<id>][,max-connections=<n>]
                                 start an NBD server for exporting block nodes;
                                 with tls-creds, clients must start TLS

          --object tls-creds-x509,id=<id>,dir=<dir>[,endpoint=server|client]
                   [,verify-peer=on|off][,sanity-check=on|off]
                                 TLS credentials: <dir> holds ca-cert.pem and
                                 server-cert.pem, server-key.pem (server) or
                                 client-cert.pem, client-key.pem (client)
          --object tls-creds-psk,id=<id>,dir=<dir>[,endpoint=server|client]
                   [,username=<name>]
                                 pre-shared keys from <dir>/keys.psk
                                 other object types are refused

          --pidfile <path>       write process ID to a file after startup

          --metrics-listen <host>:<port>
                                 (not in QEMU) serve the metrics to Prometheus at
                                 http://<host>:<port>/metrics; OTLP export is set
                                 up by the OTEL_* environment variables
          --metrics-histograms   (not in QEMU) the exporters also record the time
                                 of every request, a histogram per node and
                                 operation (off: it costs each request more than
                                 the counters, which cost nothing)

        Options are applied in the order given: an option may name what an earlier one
        made. The monitors and the NBD server answer once every option is applied and
        the pid file written. The daemon runs until SIGTERM, SIGINT or QMP quit.
        With NOTIFY_SOCKET set (a systemd Type=notify unit) it then sends READY=1,
        and STOPPING=1 when it starts to shut down.

        """;
}
