package org.edgecpm.demo;

import android.app.Activity;
import android.content.Intent;
import android.os.Bundle;
import android.view.View;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import org.edgecpm.demo.core.BundleException;
import org.edgecpm.demo.core.ChatSession;
import org.edgecpm.demo.core.GenerationStats;
import org.edgecpm.demo.core.Settings;
import org.edgecpm.demo.core.TextSink;

/** Chat with streaming output; tokens/s, time to first token and memory under the transcript. */
public class ChatActivity extends Activity {
    private TextView transcript;
    private TextView stats;
    private ScrollView scroll;
    private Button send;
    private ChatSession session;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        root.setPadding(16, 16, 16, 16);
        scroll = new ScrollView(this);
        transcript = new TextView(this);
        transcript.setTextIsSelectable(true);
        scroll.addView(transcript);
        root.addView(scroll, new LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f));
        stats = new TextView(this);
        root.addView(stats);
        final EditText input = new EditText(this);
        input.setHint("Message");
        root.addView(input);
        LinearLayout buttons = new LinearLayout(this);
        send = new Button(this);
        send.setText("Send");
        Button stop = new Button(this);
        stop.setText("Stop");
        Button bench = new Button(this);
        bench.setText("Benchmark");
        buttons.addView(send);
        buttons.addView(stop);
        buttons.addView(bench);
        root.addView(buttons);
        setContentView(root);

        try {
            Settings settings = Settings.forChat(Loaded.manifest, Loaded.liveDevice(this));
            session = new ChatSession(Loaded.manifest, Loaded.engine, settings);
            stats.setText("context " + settings.contextTokens + " tokens · load " + (long) Loaded.loadMs + " ms · "
                    + Loaded.memory().summary());
        } catch (BundleException e) {
            stats.setText(e.getMessage());
            send.setEnabled(false);
        }
        send.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                String text = input.getText().toString();
                if (!text.isEmpty()) {
                    input.setText("");
                    ask(text);
                }
            }
        });
        stop.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                Loaded.engine.stop();
            }
        });
        bench.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                startActivity(new Intent(ChatActivity.this, BenchmarkActivity.class));
            }
        });
    }

    private void ask(final String text) {
        send.setEnabled(false);
        transcript.append("\n> " + text + "\n");
        new Thread(new Runnable() {
            @Override
            public void run() {
                String line;
                try {
                    session.send(text, new TextSink() {
                        @Override
                        public void append(final String piece) {
                            runOnUiThread(new Runnable() {
                                @Override
                                public void run() {
                                    transcript.append(piece);
                                    scroll.fullScroll(View.FOCUS_DOWN);
                                }
                            });
                        }
                    });
                    GenerationStats g = session.lastStats();
                    line = (g == null ? "" : g.summary() + " · ") + Loaded.memory().summary();
                } catch (BundleException e) {
                    line = e.getMessage();
                }
                final String shown = line;
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        transcript.append("\n");
                        stats.setText(shown);
                        send.setEnabled(true);
                    }
                });
            }
        }).start();
    }
}
