using System.Diagnostics;
using System.Runtime.InteropServices;

namespace BlockMirror.TestKit;

/// <summary>
/// Two hosts on one machine: two network namespaces joined by a veth pair (<c>eth0</c> in each), with the
/// addresses <see cref="AddressA"/> and <see cref="AddressB"/> (a private /30 that exists only inside the two
/// namespaces, so pairs made by tests running side by side never clash), loopback up, and optionally a
/// <c>tbf</c> rate limit on both ends. Needs root and iproute2's <c>ip</c> and <c>tc</c>.
/// </summary>
/// <remarks>
/// Names are <c>bmnet-PID-N-a</c>/<c>-b</c>, unique per pair. <see cref="Dispose"/> kills whatever still runs
/// inside and deletes both; a pair left behind by a process that died (its PID is gone) is deleted by the
/// next <see cref="Create"/>. Nothing outside the two namespaces is touched: the veth ends are created
/// directly inside them, never in the caller's namespace.
/// </remarks>
public sealed partial class NetworkNamespaces : IDisposable
{
    /// <summary>What every name made here starts with; stale ones are found by it.</summary>
    public const string Prefix = "bmnet-";

    /// <summary>The address of host A's <c>eth0</c>.</summary>
    public const string AddressA = "10.216.0.1";

    /// <summary>The address of host B's <c>eth0</c>.</summary>
    public const string AddressB = "10.216.0.2";

    static int _counter;

    NetworkNamespaces(string a, string b)
    {
        A = a;
        B = b;
    }

    /// <summary>The name of host A's namespace.</summary>
    public string A { get; }

    /// <summary>The name of host B's namespace.</summary>
    public string B { get; }

    /// <summary>The rate limit on the link, as tc spells it (<c>1gbit</c>), or null for none.</summary>
    public string? Rate { get; private set; }

    /// <summary>Creates the pair, its link and addresses; with <paramref name="rate"/> (tc's words) the link is limited to it.</summary>
    public static NetworkNamespaces Create(string? rate = null)
    {
        DeleteStale();
        var n = Interlocked.Increment(ref _counter);
        var pair = new NetworkNamespaces($"{Prefix}{Environment.ProcessId}-{n}-a", $"{Prefix}{Environment.ProcessId}-{n}-b");
        try
        {
            Ip("netns", "add", pair.A);
            Ip("netns", "add", pair.B);
            Ip("link", "add", "eth0", "netns", pair.A, "type", "veth", "peer", "name", "eth0", "netns", pair.B);
            foreach (var (ns, address) in new[] { (pair.A, AddressA), (pair.B, AddressB) })
            {
                Ip("-n", ns, "addr", "add", $"{address}/30", "dev", "eth0");
                Ip("-n", ns, "link", "set", "eth0", "up");
                Ip("-n", ns, "link", "set", "lo", "up");
            }

            if (rate is not null)
            {
                pair.SetRate(rate);
            }

            return pair;
        }
        catch
        {
            pair.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Limits both directions of the link to <paramref name="rate"/> (tc's words, <c>1gbit</c>) with a token
    /// bucket (<c>tbf</c>), replacing any earlier limit. The bucket holds 256 KiB: more than one 1 ms tick of
    /// 1 Gbit/s, as tbf needs, and small enough that a long transfer runs at the rate.
    /// </summary>
    public void SetRate(string rate)
    {
        foreach (var ns in new[] { A, B })
        {
            Run("tc", "-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms");
        }

        Rate = rate;
    }

    /// <summary>A start description running <paramref name="program"/> inside namespace <paramref name="ns"/> (<c>ip netns exec</c>, which execs it: the process's id is the program's).</summary>
    public static ProcessStartInfo StartInfo(string ns, string program, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo("ip") { UseShellExecute = false };
        foreach (var argument in new[] { "netns", "exec", ns, program }.Concat(arguments))
        {
            start.ArgumentList.Add(argument);
        }

        return start;
    }

    /// <summary>
    /// Moves the calling thread into namespace <paramref name="ns"/>: sockets it creates from then on live
    /// there (a socket keeps the namespace it was made in, whichever thread uses it later). Only for a thread
    /// of the caller's own that ends when its work is done, never a pool thread.
    /// </summary>
    public static void EnterOnThisThread(string ns)
    {
        using var handle = File.OpenHandle($"/var/run/netns/{ns}");
        if (SetNs((int)handle.DangerousGetHandle(), CloneNewNet) != 0)
        {
            throw new InvalidOperationException($"setns into network namespace {ns} failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    const int CloneNewNet = 0x40000000;

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static partial int SetNs(int fd, int nsType);

    /// <summary>Deletes the namespaces of pairs whose process is gone (a run that crashed or was killed), with whatever still runs in them.</summary>
    public static void DeleteStale()
    {
        foreach (var line in Run("ip", "netns", "list").Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var name = line.Split(' ')[0];
            if (!name.StartsWith(Prefix, StringComparison.Ordinal))
            {
                continue;
            }

            var owner = name[Prefix.Length..].Split('-')[0];
            if (int.TryParse(owner, out var pid) && pid != Environment.ProcessId && !Directory.Exists($"/proc/{pid}"))
            {
                try
                {
                    Delete(name);
                }
                catch (InvalidOperationException)
                {
                    // Another run deleting the same leftovers got there first.
                }
            }
        }
    }

    /// <summary>Kills whatever still runs inside the pair and deletes both namespaces (and with them the link).</summary>
    public void Dispose()
    {
        Delete(A);
        Delete(B);
    }

    static void Delete(string ns)
    {
        if (!File.Exists($"/var/run/netns/{ns}"))
        {
            return;
        }

        // A process left inside would keep the namespace alive, nameless, after the delete.
        foreach (var pid in Run("ip", "netns", "pids", ns).Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            try
            {
                using var process = Process.GetProcessById(int.Parse(pid, System.Globalization.CultureInfo.InvariantCulture));
                process.Kill();
                process.WaitForExit(5_000);
            }
            catch (ArgumentException)
            {
                // Ended meanwhile.
            }
        }

        Ip("netns", "del", ns);
    }

    static void Ip(params string[] arguments) => Run("ip", arguments);

    static string Run(string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(tool) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {tool}");
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', arguments)} exited {process.ExitCode}: {stderr.Result.Trim()}");
        }

        return stdout;
    }
}
