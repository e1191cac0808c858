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
    public static IDisposable? Start(IDictionary environment, MetricsListenAddress? prometheus)
    {
        var otlp = OtlpRequested(environment);
        if (!otlp && prometheus is null)
        {
            return null;
        }

        var builder = Sdk.CreateMeterProviderBuilder().AddMeter(BlockMetrics.MeterName);
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
