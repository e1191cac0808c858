namespace BlockMirror.Block.Io;

/// <summary>Lock-free updates that <see cref="Interlocked"/> has no single call for.</summary>
public static class Atomic
{
    /// <summary>Raises <paramref name="target"/> to <paramref name="value"/> unless it is already as high, against concurrent raisers.</summary>
    public static void Max(ref long target, long value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
