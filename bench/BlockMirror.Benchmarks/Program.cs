using BenchmarkDotNet.Running;

namespace BlockMirror.Benchmarks;

/// <summary>
/// Entry point: BenchmarkDotNet's switcher, so <c>--filter '*Bitmap*'</c> (or <c>--list flat</c>) picks
/// benchmarks by name. Each benchmark class carries its own job configuration.
/// </summary>
public static class Program
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
