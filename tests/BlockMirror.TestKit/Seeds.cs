namespace BlockMirror.TestKit;

/// <summary>
/// How many random seeds model and concurrency tests run. Fixed seeds (0..n-1) so a failure repeats;
/// <c>BLOCKMIRROR_SEEDS</c> raises the count for a long run.
/// </summary>
public static class Seeds
{
    /// <summary>The seeds to run: <paramref name="ciDefault"/> unless BLOCKMIRROR_SEEDS says otherwise.</summary>
    public static IEnumerable<int> Range(int ciDefault)
    {
        var count = int.TryParse(Environment.GetEnvironmentVariable("BLOCKMIRROR_SEEDS"), out var n) && n > 0 ? n : ciDefault;
        return Enumerable.Range(0, count);
    }

    /// <summary>Wraps a failure with the seed that produced it, so it can be replayed as a named test.</summary>
    public static async Task RunAsync(IEnumerable<int> seeds, Func<int, Task> body)
    {
        foreach (var seed in seeds)
        {
            try
            {
                await body(seed);
            }
            catch (Exception ex)
            {
                throw new SeedFailedException(seed, ex);
            }
        }
    }

    public static void Run(IEnumerable<int> seeds, Action<int> body)
    {
        foreach (var seed in seeds)
        {
            try
            {
                body(seed);
            }
            catch (Exception ex)
            {
                throw new SeedFailedException(seed, ex);
            }
        }
    }
}

/// <summary>A randomized test failed; the message names the seed.</summary>
public sealed class SeedFailedException(int seed, Exception inner)
    : Exception($"seed {seed} failed: {inner.Message}", inner)
{
    public int Seed { get; } = seed;
}
