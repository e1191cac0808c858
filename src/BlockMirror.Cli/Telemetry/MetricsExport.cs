using System.Collections;
using BlockMirror.Block.Diagnostics;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace BlockMirror.Cli.Telemetry;

/// <summary>
/// Where <c>blockmirror serve</c> sends the BlockMirror meter's measurements, besides any listener that
/// attaches by itself (dotnet-counters needs nothing from here): OTLP when the standard OpenTelemetry
/// variables ask for it, and a Prometheus scrape endpoint when <c>--metrics-listen</c> gives an address.
/// Nothing is started otherwise, so the instruments stay without listener and cost nothing.
/// </summary>
/// <remarks>
/// OTLP is on when <c>OTEL_METRICS_EXPORTER</c> names <c>otlp</c>, or when it is unset and
/// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> or <c>OTEL_EXPORTER_OTLP_METRICS_ENDPOINT</c> is; never when
/// <c>OTEL_SDK_DISABLED</c> is true or <c>OTEL_METRICS_EXPORTER</c> is <c>none</c>. The exporter itself reads
/// the rest (protocol, headers, timeout, <c>OTEL_METRIC_EXPORT_INTERVAL</c>, <c>OTEL_SERVICE_NAME</c>,
/// <c>OTEL_RESOURCE_ATTRIBUTES</c>). A collector that is absent or refuses costs a failed export per
/// interval, reported on OpenTelemetry's event source, and never stops the daemon.
/// </remarks>
static class MetricsExport
{
    /// <summary>How long the last export may take when the daemon stops.</summary>
    const int ShutdownMilliseconds = 3000;

    /// <summary>True when the environment asks for metrics over OTLP.</summary>
    public static bool OtlpRequested(IDictionary environment)
    {
        string? Get(string name) => environment[name] as string is { Length: > 0 } value ? value.Trim() : null;

        if (string.Equals(Get("OTEL_SDK_DISABLED"), "true", StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        if (Get("OTEL_METRICS_EXPORTER") is { } exporters)
        {
            return exporters.Split(',', StringSplitOptions.TrimEntries).Contains("otlp", StringComparer.OrdinalIgnoreCase);
        }

        return Get("OTEL_EXPORTER_OTLP_ENDPOINT") is not null || Get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") is not null;
    }

    /// <summary>
    /// Starts the exporters asked for: OTLP by <paramref name="environment"/>, Prometheus when
    /// <paramref name="prometheus"/> is given. Null when neither is; dispose the result to stop them.
    /// </summary>
    /// <param name="histograms">
    /// Whether they record the request-duration histogram. Off unless asked for, as QEMU's latency histograms
    /// are (block-latency-histogram-set): OpenTelemetry's aggregation finds each measurement's series by its
    /// tags and updates it under a lock, about 1,100 instructions a request (bench/stats-instructions.sh),
    /// a sixth of what the daemon spends on a 4 KiB NBD request; the counters are read from the node and
    /// export statistics only when the exporter collects, and cost the request nothing. Dropped by a view,
    /// the histogram is never enabled, so the request path does not even build the measurement.
    /// </param>
    public static IDisposable? Start(IDictionary environment, MetricsListenAddress? prometheus, bool histograms)
    {
        var otlp = OtlpRequested(environment);
        if (!otlp && prometheus is null)
        {
            return null;
        }

        var builder = Sdk.CreateMeterProviderBuilder().AddMeter(BlockMetrics.MeterName);
        if (!histograms)
        {
            builder.AddView(BlockMetrics.RequestDurationName, MetricStreamConfiguration.Drop);
        }

        if (environment["OTEL_SERVICE_NAME"] is null)
        {
            builder.ConfigureResource(resource => resource.AddService("blockmirror"));
        }

        if (otlp)
        {
            builder.AddOtlpExporter();
        }

        if (prometheus is { } address)
        {
            builder.AddPrometheusHttpListener(options =>
            {
                options.Host = address.Host;
                options.Port = address.Port;
            });
        }

        return new Provider(builder.Build());
    }

    sealed class Provider(MeterProvider provider) : IDisposable
    {
        public void Dispose()
        {
            provider.Shutdown(ShutdownMilliseconds);
            provider.Dispose();
        }
    }
}
