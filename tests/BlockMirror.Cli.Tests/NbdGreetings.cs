using System.Net.Sockets;

namespace BlockMirror.Cli.Tests;

/// <summary>
/// How many clients of an NBD server are greeted at once, and whether a waiting one is greeted when a served one
/// leaves: the measure of <c>max-connections</c> on qemu-storage-daemon and on ours.
/// </summary>
static class NbdGreetings
{
    /// <summary>
    /// Connects <paramref name="limit"/> + 1 clients at once and counts those greeted (once the first
    /// <paramref name="limit"/> are, half a second more); then closes one greeted client and counts the waiting
    /// ones greeted after it.
    /// </summary>
    /// <remarks>
    /// qemu-storage-daemon 7.2 (Debian's) drops a client that has not negotiated within 10 s, which frees its
    /// slot; now and then under load it greets the first clients only that late, so the count is void. Such a
    /// measurement (first greetings slower than 5 s) is taken again, once the dropped clients have gone.
    /// </remarks>
    public static async Task<string> CountAsync(string socket, int limit)
    {
        for (var attempt = 1; ; attempt++)
        {
            var result = await TryGreetingsAsync(socket, limit, TimeSpan.FromSeconds(attempt < 3 ? 5 : 60));
            if (result is not null)
            {
                return result;
            }

            await Task.Delay(TimeSpan.FromSeconds(1));
        }
    }

    static async Task<string?> TryGreetingsAsync(string socket, int limit, TimeSpan firstGreetings)
    {
        var clients = new List<Socket>();
        try
        {
            var greetings = new List<Task<int>>();
            for (var i = 0; i <= limit; i++)
            {
                var client = await ConnectAsync(socket, clients);
                greetings.Add(client.ReceiveAsync(new byte[18]));
            }

            // The clients within the limit are greeted however long a loaded machine takes; then half a second more
            // shows whether the one past it is greeted too.
            if (await CountWithinAsync(greetings, firstGreetings, enough: limit) < limit)
            {
                return null;
            }

            var atOnce = await CountWithinAsync(greetings, TimeSpan.FromMilliseconds(500));

            // The waiting ones are taken before a greeted client leaves: qemu-storage-daemon greets the next within
            // microseconds of the close.
            var waiting = greetings.Where(g => !g.IsCompleted).ToList();
            clients[greetings.FindIndex(g => g.IsCompletedSuccessfully && g.Result > 0)].Dispose();
            var afterwards = await CountWithinAsync(waiting, TimeSpan.FromSeconds(10), enough: waiting.Count);
            return $"greeted at once: {atOnce}, then after one left: {afterwards}";
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    /// <summary>
    /// A client connected to <paramref name="socket"/>. qemu-storage-daemon listens with a backlog of max-connections,
    /// so a connect may find it full (EAGAIN) while the last client's close is still queued: it is tried again.
    /// </summary>
    static async Task<Socket> ConnectAsync(string socket, List<Socket> clients)
    {
        for (var attempt = 0; ; attempt++)
        {
            var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await client.ConnectAsync(new UnixDomainSocketEndPoint(socket));
                clients.Add(client);
                return client;
            }
            catch (SocketException) when (attempt < 100)
            {
                client.Dispose();
                await Task.Delay(20);
            }
        }
    }

    static async Task<int> CountWithinAsync(List<Task<int>> greetings, TimeSpan time, int? enough = null)
    {
        var deadline = Task.Delay(time);
        while (!deadline.IsCompleted && greetings.Any(g => !g.IsCompleted) && !(greetings.Count(g => g.IsCompleted) >= enough))
        {
            await Task.WhenAny([deadline, .. greetings.Where(g => !g.IsCompleted)]);
        }

        return greetings.Count(g => g.IsCompletedSuccessfully && g.Result > 0);
    }
}
