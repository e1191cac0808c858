using System.Net.Sockets;
using System.Text;

namespace BlockMirror.Cli.Systemd;

/// <summary>
/// sd_notify without libsystemd: one datagram to the Unix socket named by <c>NOTIFY_SOCKET</c> (a path, or an
/// abstract name written with a leading '@'), so a <c>Type=notify</c> unit knows when the daemon serves
/// (<c>READY=1</c>) and that it is stopping (<c>STOPPING=1</c>). Nothing happens without the variable.
/// </summary>
static class SystemdNotify
{
    const string SocketVariable = "NOTIFY_SOCKET";

    /// <summary>Sends <paramref name="state"/> (newline-separated assignments); a failure is reported on stderr, never fatal.</summary>
    public static void Send(string state)
    {
        var address = Environment.GetEnvironmentVariable(SocketVariable);
        if (string.IsNullOrEmpty(address))
        {
            return;
        }

        try
        {
            if (address[0] is not ('/' or '@'))
            {
                throw new ArgumentException("neither an absolute path nor an abstract name ('@...')");
            }

            // The kernel's abstract namespace begins with a NUL byte, which .NET's endpoint takes as written.
            var endPoint = new UnixDomainSocketEndPoint(address[0] == '@' ? "\0" + address[1..] : address);
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.SendTo(Encoding.UTF8.GetBytes(state), endPoint);
        }
        catch (Exception ex) when (ex is SocketException or ArgumentException)
        {
            // The daemon serves either way; a unit that waits for READY=1 will time out and say so.
            Console.Error.WriteLine($"blockmirror serve: could not notify the service manager at {SocketVariable}={address}: {ex.Message}");
        }
    }
}
