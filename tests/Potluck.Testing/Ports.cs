using System.Net;
using System.Net.Sockets;

namespace Potluck.Testing;

/// <summary>Loopback ports for test processes and in-process hosts: the one port helper of every test project.</summary>
public static class Ports
{
    // The kernel may hand the same ephemeral port to two listeners in a row once the first is closed; a test that
    // starts several nodes must not give two of them one port.
    private static readonly HashSet<int> Issued = [];

    /// <summary>A currently free loopback port (the OS picks it), not handed out before by this process.</summary>
    public static int Free()
    {
        for (var attempt = 0; ; attempt++)
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            lock (Issued)
                if (Issued.Add(port) || attempt >= 20) return port;
        }
    }
}
