using System.Net;
using BlockMirror.Cli.Telemetry;

namespace BlockMirror.Cli.Commands;

static partial class ServeCommand
{
    /// <summary>
    /// Starts the metrics exporters the environment (OTEL_*) and <c>--metrics-listen</c> ask for, once every
    /// option is applied; null when none is asked for. They record the request-duration histogram only with
    /// <c>--metrics-histograms</c>.
    /// </summary>
    static IDisposable? StartMetrics(MetricsListenAddress? listen, bool histograms)
    {
        try
        {
            return MetricsExport.Start(Environment.GetEnvironmentVariables(), listen, histograms);
        }
        catch (HttpListenerException ex)
        {
            throw new UsageException($"{MetricsListenOption} {listen?.Host}:{listen?.Port}: cannot listen: {ex.Message}", ex);
        }
    }
}
