package org.edgecpm.demo;

import android.app.ActivityManager;
import android.content.Context;
import java.io.BufferedReader;
import java.io.FileReader;
import java.io.IOException;
import org.edgecpm.demo.core.BundleManifest;
import org.edgecpm.demo.core.DeviceInfo;
import org.edgecpm.demo.core.MemoryStats;

/** The bundle and engine the activities share while the app runs (one model at a time). */
final class Loaded {
    static BundleManifest manifest;
    static ExecuTorchEngine engine;
    static double loadMs;

    private Loaded() {
    }

    /** This phone right now: free memory (at most half the total) and its cores. */
    static DeviceInfo liveDevice(Context context) {
        ActivityManager am = (ActivityManager) context.getSystemService(Context.ACTIVITY_SERVICE);
        ActivityManager.MemoryInfo mi = new ActivityManager.MemoryInfo();
        am.getMemoryInfo(mi);
        return new DeviceInfo("this phone", Math.min(mi.availMem, mi.totalMem / 2),
                Runtime.getRuntime().availableProcessors());
    }

    static MemoryStats memory() {
        StringBuilder sb = new StringBuilder();
        try {
            BufferedReader r = new BufferedReader(new FileReader("/proc/self/status"));
            try {
                for (String line = r.readLine(); line != null; line = r.readLine()) {
                    sb.append(line).append('\n');
                }
            } finally {
                r.close();
            }
        } catch (IOException e) {
            sb.setLength(0);
        }
        return MemoryStats.parseProcStatus(sb.toString());
    }
}
