namespace BlockMirror.Cli.Ui;

/// <summary>Bytes per second over a sliding window of samples, for progress displays.</summary>
sealed class RateMeter(TimeSpan window)
{
    readonly Queue<(DateTimeOffset Time, long Total)> _samples = new();

    public double Sample(long total)
    {
        var now = DateTimeOffset.UtcNow;
        _samples.Enqueue((now, total));
        while (_samples.Count > 2 && now - _samples.Peek().Time > window)
        {
            _samples.Dequeue();
        }

        var (firstTime, firstTotal) = _samples.Peek();
        var seconds = (now - firstTime).TotalSeconds;
        return seconds > 0 ? (total - firstTotal) / seconds : 0;
    }
}
