using System.Collections;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using BlockMirror.Cli.Telemetry;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// <c>blockmirror serve</c>'s metrics export: the Prometheus endpoint of <c>--metrics-listen</c> on loopback, OTLP
/// set up by the OTEL_* variables (sent to a stand-in collector; and a collector that is absent does not
/// disturb the daemon), and which variables turn OTLP on.
/// </summary>
public sealed class ServeMetricsTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-serve-metrics-");

    public void Dispose() => _dir.Dispose();

    static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    /// <summary>
    /// Starts serve on a qcow2 image exported over NBD, with <paramref name="extra"/> options and environment,
    /// writes 64 KiB through the export with qemu-io, runs <paramref name="check"/>, then quits and expects exit 0.
    /// </summary>
    async Task ServeAsync(string[] extra, Dictionary<string, string> environment, Func<QmpClient, Task> check)
    {
        ExternalTool.Require("qemu-io");
        var image = _dir.File("disk.qcow2");
        await ExternalTool.RunCheckedAsync("qemu-img", "create", "-f", "qcow2", image, "4M");
        var start = BlockMirrorCli.StartInfo([
            "serve",
            "--blockdev", $"driver=file,node-name=file0,filename={image}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--nbd-server", $"addr.type=unix,addr.path={_dir.File("nbd.sock")}",
            "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on",
            "--chardev", $"socket,id=mon0,path={_dir.File("qmp.sock")},server=on,wait=off", "--monitor", "chardev=mon0",
            .. extra,
        ]);
        foreach (var (name, value) in environment)
        {
            start.Environment[name] = value;
        }

        using var daemon = Process.Start(start)!;
        var stderr = daemon.StandardError.ReadToEndAsync();
        try
        {
            await using var qmp = await QmpClient.ConnectAsync(_dir.File("qmp.sock"));
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", $"nbd+unix:///disk?socket={_dir.File("nbd.sock")}");
            await check(qmp);
            await qmp.ExecuteAsync("quit");
            Assert.True(daemon.WaitForExit(30_000), "serve did not exit after quit");
            Assert.True(daemon.ExitCode == 0, $"serve exited {daemon.ExitCode}: {await stderr}");
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Kill(entireProcessTree: true);
            }

            await daemon.WaitForExitAsync();
        }
    }

    /// <summary>The value of the Prometheus sample <paramref name="metric"/> whose labels include every one of <paramref name="labels"/>.</summary>
    static double Sample(string exposition, string metric, params string[] labels)
    {
        var line = exposition.Split('\n').Single(l => l.StartsWith(metric + "{", StringComparison.Ordinal) && labels.All(l.Contains));
        return double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
    }

    [SkippableFact]
    public async Task The_prometheus_endpoint_answers_on_loopback_with_the_node_and_export_counts()
    {
        var port = FreePort();
        await ServeAsync(["--metrics-listen", $"127.0.0.1:{port}"], [], async qmp =>
        {
            using var http = new HttpClient();
            var exposition = await http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/metrics"));

            Assert.Equal(65536, Sample(exposition, "blockmirror_node_bytes_total", "node=\"disk0\"", "op=\"write\""));
            Assert.Equal(1, Sample(exposition, "blockmirror_node_requests_total", "node=\"disk0\"", "op=\"write\""));
            // The request-duration histogram is recorded only with --metrics-histograms.
            Assert.DoesNotContain("blockmirror_node_request_duration", exposition, StringComparison.Ordinal);
            Assert.Equal(65536, Sample(exposition, "blockmirror_export_bytes_total", "export=\"exp0\"", "op=\"write\""));
            Assert.Equal(1, Sample(exposition, "blockmirror_export_requests_total", "export=\"exp0\"", "op=\"write\""));
            Assert.Equal(0, Sample(exposition, "blockmirror_export_errors_total", "export=\"exp0\""));
            // The file node under the qcow2 node counted the data and the driver's metadata.
            Assert.True(Sample(exposition, "blockmirror_node_bytes_total", "node=\"file0\"", "op=\"write\"") >= 65536);

            // The same counts as query-blockstats.
            var stats = (await qmp.ExecuteAsync("query-blockstats", new JsonObject { ["query-nodes"] = true }))!.AsArray()
                .Single(n => (string?)n!["node-name"] == "disk0")!["stats"]!;
            Assert.Equal(65536, (long)stats["wr_bytes"]!);
        });
    }

    [SkippableFact]
    public async Task With_metrics_histograms_the_endpoint_has_the_request_duration_histogram()
    {
        var port = FreePort();
        await ServeAsync(["--metrics-listen", $"127.0.0.1:{port}", "--metrics-histograms"], [], async _ =>
        {
            using var http = new HttpClient();
            var exposition = await http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/metrics"));

            Assert.Equal(1, Sample(exposition, "blockmirror_node_request_duration_seconds_count", "node=\"disk0\"", "op=\"write\""));
            // The storage-latency buckets the instrument advises, not OpenTelemetry's millisecond defaults.
            Assert.Equal(1, Sample(exposition, "blockmirror_node_request_duration_seconds_bucket", "node=\"disk0\"", "op=\"write\"", "le=\"10\""));
            Assert.Contains("le=\"1E-05\"", exposition, StringComparison.OrdinalIgnoreCase);
        });
    }

    [SkippableFact]
    public async Task Otlp_set_up_by_the_environment_sends_the_metrics_to_the_collector()
    {
        var port = FreePort();
        using var collector = new HttpListener();
        collector.Prefixes.Add($"http://127.0.0.1:{port}/");
        collector.Start();
        var received = ReceiveMetricsAsync(collector, "blockmirror.node.bytes");

        await ServeAsync([], new()
        {
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = $"http://127.0.0.1:{port}",
            ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf",
            ["OTEL_METRIC_EXPORT_INTERVAL"] = "200",
        }, async _ =>
        {
            var (path, body) = await received.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal("/v1/metrics", path);
            // Protobuf carries strings as they are: the metric, node and export names are in the body.
            Assert.Contains("blockmirror.export.requests", body, StringComparison.Ordinal);
            Assert.Contains("disk0", body, StringComparison.Ordinal);
        });
    }

    /// <summary>Answers every OTLP export with 200 until one mentions <paramref name="wanted"/>; returns its path and body (bytes read as Latin-1).</summary>
    static async Task<(string Path, string Body)> ReceiveMetricsAsync(HttpListener collector, string wanted)
    {
        while (true)
        {
            var context = await collector.GetContextAsync();
            using var buffer = new MemoryStream();
            await context.Request.InputStream.CopyToAsync(buffer);
            context.Response.StatusCode = 200;
            context.Response.Close();
            var body = Encoding.Latin1.GetString(buffer.ToArray());
            if (body.Contains(wanted, StringComparison.Ordinal))
            {
                return (context.Request.Url!.AbsolutePath, body);
            }
        }
    }

    [SkippableFact]
    public async Task Otlp_to_a_collector_that_is_absent_leaves_the_daemon_serving_and_quitting_cleanly()
    {
        // Nothing listens there: every export fails (several within the test at this interval).
        var port = FreePort();
        await ServeAsync([], new()
        {
            ["OTEL_EXPORTER_OTLP_ENDPOINT"] = $"http://127.0.0.1:{port}",
            ["OTEL_METRIC_EXPORT_INTERVAL"] = "50",
        }, async qmp =>
        {
            await Task.Delay(300);
            var stats = (await qmp.ExecuteAsync("query-blockstats", new JsonObject { ["query-nodes"] = true }))!.AsArray()
                .Single(n => (string?)n!["node-name"] == "disk0")!["stats"]!;
            Assert.Equal(65536, (long)stats["wr_bytes"]!);
            await ExternalTool.RunCheckedAsync("qemu-io", "-f", "raw", "-c", "read -P 0x42 0 64k", $"nbd+unix:///disk?socket={_dir.File("nbd.sock")}");
        });
    }

    [Fact]
    public async Task A_metrics_listen_address_that_is_not_host_and_port_is_refused_before_anything_starts()
    {
        var result = await BlockMirrorCli.RunAsync("serve", "--metrics-listen", "9464");
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("--metrics-listen 9464: '9464' is not HOST:PORT", result.StandardError, StringComparison.Ordinal);

        result = await BlockMirrorCli.RunAsync("serve", "--metrics-listen", "::1:9464");
        Assert.Contains("must be written in brackets: [::1]:9464", result.StandardError, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", true)]
    [InlineData("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://c:4318/v1/metrics", true)]
    [InlineData("OTEL_METRICS_EXPORTER=otlp", true)]
    [InlineData("OTEL_METRICS_EXPORTER=prometheus, otlp", true)]
    [InlineData("OTEL_METRICS_EXPORTER=none;OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", false)]
    [InlineData("OTEL_SDK_DISABLED=true;OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", false)]
    [InlineData("OTEL_SERVICE_NAME=x", false)]
    [InlineData("", false)]
    public void Otlp_is_on_only_when_the_standard_variables_ask_for_it(string variables, bool expected)
    {
        var environment = new Hashtable();
        foreach (var pair in variables.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            environment[pair[..equals]] = pair[(equals + 1)..];
        }

        Assert.Equal(expected, MetricsExport.OtlpRequested(environment));
    }
}
