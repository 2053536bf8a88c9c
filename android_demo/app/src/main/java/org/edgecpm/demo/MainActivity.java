package org.edgecpm.demo;

import android.app.Activity;
import android.content.Intent;
import android.os.Bundle;
import android.os.SystemClock;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.LinearLayout;
import android.widget.ListView;
import android.widget.TextView;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import org.edgecpm.demo.core.BundleException;
import org.edgecpm.demo.core.BundleManifest;

/** Picks a bundle pushed under {@link BundleManifest#DEVICE_DIR} (the folder itself or one subfolder each). */
public class MainActivity extends Activity {
    private TextView status;
    private final List<File> bundles = new ArrayList<File>();

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        root.setPadding(24, 24, 24, 24);
        status = new TextView(this);
        root.addView(status);
        ListView list = new ListView(this);
        root.addView(list, new LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f));
        setContentView(root);

        File top = new File(BundleManifest.DEVICE_DIR);
        if (new File(top, BundleManifest.FILE_NAME).isFile()) {
            bundles.add(top);
        }
        File[] subs = top.listFiles();
        if (subs != null) {
            for (File f : subs) {
                if (f.isDirectory() && new File(f, BundleManifest.FILE_NAME).isFile()) {
                    bundles.add(f);
                }
            }
        }
        List<String> names = new ArrayList<String>();
        for (File f : bundles) {
            names.add(f.getPath());
        }
        status.setText(bundles.isEmpty()
                ? "No bundle in " + BundleManifest.DEVICE_DIR + ". On the computer: edgecpm package android ARTIFACT "
                + "--out bundle && sh bundle/push.sh"
                : "Pick a bundle:");
        list.setAdapter(new ArrayAdapter<String>(this, android.R.layout.simple_list_item_1, names));
        list.setOnItemClickListener(new AdapterView.OnItemClickListener() {
            @Override
            public void onItemClick(AdapterView<?> parent, View view, int position, long id) {
                open(bundles.get(position));
            }
        });
    }

    private void open(final File dir) {
        status.setText("Loading " + dir + " …");
        new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    BundleManifest m = BundleManifest.read(dir);
                    m.verifyFiles(false);
                    if (Loaded.engine != null) {
                        Loaded.engine.close();
                    }
                    ExecuTorchEngine engine = new ExecuTorchEngine(m);
                    long t0 = SystemClock.elapsedRealtime();
                    engine.load();
                    Loaded.loadMs = SystemClock.elapsedRealtime() - t0;
                    Loaded.manifest = m;
                    Loaded.engine = engine;
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            status.setText("Loaded in " + (long) Loaded.loadMs + " ms");
                            startActivity(new Intent(MainActivity.this, ChatActivity.class));
                        }
                    });
                } catch (final BundleException e) {
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            status.setText(e.getMessage());
                        }
                    });
                }
            }
        }).start();
    }
}
